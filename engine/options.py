"""The option lists, each spelled once: the command line's choices (`engine.cli`) and the
app's settings (`app.settings`) both read them. Plain data, no imports.
"""

from __future__ import annotations

# the catalogue's models (models/catalogue.json), the default first
MODELS = ("htdemucs_6s", "htdemucs", "htdemucs_ft")
# `--backend`: auto (the calibrated choice) or a runtime (engine.pipeline builds each)
BACKENDS = ("auto", "torch", "coreml", "mlx", "openvino", "onnxruntime", "onnxruntime-coreml")
# the quality gates `--backend auto` must pass, worst-stem SNR against PyTorch fp32 (dB)
QUALITY_GATES = {"exact": 70.0, "default": 60.0, "fast": 40.0}
QUALITIES = ("default", "exact", "fast")
# CoreML compute units (all = Neural Engine when possible); engine.coreml.backend maps them
COMPUTE_UNITS = ("all", "cpu_and_gpu", "cpu_only", "cpu_and_ne")
# `--precision`, over all backends (each accepts its own subset: engine.backends)
PRECISIONS = ("fp32", "bf16", "mixed", "fp16")
# written files: container and sample format (engine.writers.OutputFormat)
CONTAINERS = ("wav", "flac", "mp3")
SAMPLE_FORMATS = ("int16", "int24", "float32")
CLIP_MODES = ("rescale", "clamp", "none")
