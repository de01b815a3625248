"""Keep freed tensor memory for reuse instead of handing it back to the kernel.

Each network call allocates dozens of 10-70 MB temporaries. By default glibc serves large
blocks with a fresh mmap, or trims them off the heap top once freed, so such a tensor
page-faults and zero-fills all its pages again on every call: measured here, a 66 MB matmul
took 25 ms into a new tensor and 5 ms into a reused one. Raising the mmap threshold to its
ceiling (32 MB) and turning trimming off keeps every block up to 32 MB on the heap for the next
chunk: one real-architecture segment then takes 2.31-2.47 s instead of 2.55-2.84 s.

A heap that never trims can creep, though: holes left between blocks of different lifetimes
(the network, the post stage, the writer) are not always reusable, and one 20-minute
run grew 211 MB above a 1-minute run. So the backend gives freed pages back every
`RELEASE_EVERY` network calls (`release_freed`): the next call pays the page faults once, and
the growth stays bounded by what a few chunks can leave behind.

Measured and not taken: mmap off altogether (blocks above 32 MB reused too). No faster
(2.37 s), but +200 MB of peak RSS, and in one of two 20-minute runs the heap crept by 165 MB
(tests/engine/test_memory.py allows 150).

Only glibc has `mallopt`. macOS's allocator keeps a cache of freed large blocks on its own, and
elsewhere this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling on 64-bit (HEAP_MAX_SIZE / 2)

RELEASE_EVERY = 8  # network calls between two trims

_done: bool | None = None
_libc: ctypes.CDLL | None = None


def keep_freed_memory() -> bool:
    """Tune this process's allocator once; True when it took effect (glibc only)."""
    global _done
    if _done is None:
        _done = _tune_glibc() if sys.platform.startswith("linux") else False
    return _done


def release_freed() -> None:
    """Give the kernel back every whole free page of every arena (when tuned; else a no-op)."""
    if _done and _libc is not None:
        _libc.malloc_trim(0)


def _tune_glibc() -> bool:
    global _libc
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    except (OSError, AttributeError):  # musl and friends have no mallopt / malloc_trim
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    # Setting either also stops glibc's own sliding of both thresholds.
    ok = (bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX))
          and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)))
    if not ok:
        log.debug("mallopt refused; large tensors stay on mmap")
    _libc = libc
    return ok
