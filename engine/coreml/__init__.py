"""CoreML (macOS 13+): the network core converted to an ML Program (`convert`), the cache
of converted packages keyed by checkpoint and settings (`cache`), and the backend that runs
them on the Neural Engine, GPU or CPU (`backend`)."""
