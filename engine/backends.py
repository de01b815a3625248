"""Backends run the network core (`engine.core`) on a batch of chunks.

A backend sees only real float32 arrays (see `engine.core` for the layout):
    predict(spec (B, 2C, F, T), wave (B, C, L))
        -> (spec_out (B, S, 2C, F, T), time_out (B, S, C, L))
One backend serves one model (a bag gets one backend per member). `TorchBackend` runs anywhere
(cpu, cuda, mps); `engine.coreml.backend.CoreMLBackend` runs the converted core on macOS;
`engine.openvino_backend.OpenVINOBackend` and `engine.onnxruntime_backend.ONNXRuntimeBackend`
run the core exported to ONNX (`engine.onnx_export`, cached by `engine.onnx_cache`);
`engine.mlx_backend.MLXBackend` runs an MLX port of the core (Apple GPU, or MLX's CPU build).
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from engine.allocator import RELEASE_EVERY, keep_freed_memory, release_freed
from engine.errors import DemixerError
from engine.shapes import CoreShapes

if TYPE_CHECKING:
    from torch import nn

# NB: torch is imported where a torch backend is made, not here: a start from a cached ONNX
# export (OpenVINO, ONNX Runtime) then never pays its 2.7 s import.


@runtime_checkable
class Backend(Protocol):
    name: str
    shapes: CoreShapes
    max_batch: int  # chunks per predict call that pay off on this backend

    @property
    def host_bound(self) -> bool:
        """True if predict computes on this machine's CPU cores (so nothing should overlap it)."""
        ...

    def predict(self, spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


PRECISIONS = ("fp32", "bf16")


class TorchBackend:
    """The core in PyTorch, on `device` ('cpu', 'cuda', 'mps').

    precision 'fp32' is exact (demucs's arithmetic, sums reordered at most); 'bf16' runs under
    autocast, which uses the CPU's AVX-512 BF16 / AMX units where present: faster, and still
    >= 40 dB from exact.
    """

    name = "torch"

    def __init__(self, model: nn.Module, device: str = "cpu", max_batch: int = 1,
                 precision: str = "fp32") -> None:
        import torch

        from engine.core import HTDemucsCore
        from engine.torch_kernels import use_fast_kernels

        if precision not in PRECISIONS:
            raise DemixerError(f"Unknown precision '{precision}' for the torch backend; "
                               f"use {' or '.join(PRECISIONS)}.")
        self.device = torch.device(device)
        if self.device.type == "cpu":
            keep_freed_memory()  # ~10% per segment on glibc (see engine.allocator)
            use_fast_kernels(model)  # see engine.torch_kernels: same sums, faster forms
        self.core = HTDemucsCore(model).to(self.device).eval()
        self.shapes = self.core.shapes
        self.max_batch = max_batch  # measured: batch 2 does not pay on a 2-core CPU
        self.precision = precision
        self.calls = 0
        if precision != "fp32":
            self.name = f"torch-{precision}"

    @property
    def host_bound(self) -> bool:
        return self.device.type == "cpu"

    def predict(self, spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # The MHA "fast path" computes self-attention with a materialised (F*T)^2 matrix; off,
        # nn.MultiheadAttention uses scaled_dot_product_attention (flash kernel on CPU): same
        # fp32 result (>130 dB), 11% faster per segment here. NB: the flag is process-global;
        # it is restored after each call, and nothing else in Demixer runs MHA concurrently.
        import torch

        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            return self._predict(spec, wave)
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
            self.calls += 1
            if self.calls % RELEASE_EVERY == 0:
                release_freed()  # bounds heap creep on long songs (see engine.allocator)

    def _predict(self, spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                    enabled=self.precision == "bf16"):
            s = torch.from_numpy(np.ascontiguousarray(spec)).to(self.device)
            w = torch.from_numpy(np.ascontiguousarray(wave)).to(self.device)
            spec_out, time_out = self.core(s, w)
            return spec_out.float().cpu().numpy(), time_out.float().cpu().numpy()


def check_device(device: str) -> str:
    """Validate a torch device name early, with one sentence instead of a traceback."""
    kind = device.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise DemixerError(f"Unknown device '{device}'; use cpu, cuda or mps.")
    if kind == "cpu":
        return device  # without importing torch: a cached start may not need it
    import torch

    if kind == "cuda" and not torch.cuda.is_available():
        raise DemixerError("Device 'cuda' is not available on this machine; use -d cpu.")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise DemixerError("Device 'mps' is not available on this machine; use -d cpu.")
    return device


def coreml_supported() -> bool:
    """CoreML prediction needs macOS 13 or later."""
    if sys.platform != "darwin":
        return False
    major = int((platform.mac_ver()[0] or "0").split(".")[0])
    return major >= 13


# Backends that run the core exported to ONNX (engine.onnx_export): no torch once exported.
EXPORTED_KINDS = ("openvino", "onnxruntime", "onnxruntime-coreml")
KINDS = ("auto", "torch", "coreml", "mlx", *EXPORTED_KINDS)
BACKEND_KINDS = KINDS  # (the name the MLX work used)


def _check_runtime(kind: str) -> None:
    """A `DemixerError` (one sentence) if the runtime of an exported kind cannot run here."""
    if kind == "openvino":
        from engine.openvino_backend import openvino_available

        if not openvino_available():
            raise DemixerError("OpenVINO is not installed (pip install openvino); "
                               "use --backend torch.")
        return
    from engine.onnxruntime_backend import coreml_provider_available, onnxruntime_available

    if not onnxruntime_available():
        raise DemixerError("ONNX Runtime is not installed (pip install onnxruntime); "
                           "use --backend torch.")
    if kind == "onnxruntime-coreml" and not coreml_provider_available():
        raise DemixerError("ONNX Runtime has no CoreML execution provider on this machine "
                           "(macOS only); use --backend onnxruntime.")


def resolve_backend_kind(kind: str) -> str:
    """'auto' -> 'coreml' on macOS 13+, 'torch' elsewhere; validates explicit choices
    ('mlx' needs MLX installed and working: `engine.mlx_backend.mlx_available`)."""
    if kind == "auto":
        return "coreml" if coreml_supported() else "torch"
    if kind == "coreml" and not coreml_supported():
        raise DemixerError("CoreML needs macOS 13 or later; use --backend torch")
    if kind == "mlx":
        from engine.mlx_backend import NOT_INSTALLED, mlx_available

        if not mlx_available():
            raise DemixerError(NOT_INSTALLED)
    if kind not in KINDS:
        raise DemixerError(f"Unknown backend '{kind}'; use {', '.join(KINDS)}.")
    if kind in EXPORTED_KINDS:
        _check_runtime(kind)
    return kind


def check_exported_precision(kind: str, precision: str | None) -> str:
    """The precision an exported kind runs at (None = exact fp32); a `DemixerError` (one
    sentence) for one it cannot run: OpenVINO has fp32 and, on CPUs with bf16 arithmetic,
    bf16; ONNX Runtime has fp32 only (no bf16 arithmetic on x86, measured)."""
    precision = precision or "fp32"
    if kind == "openvino":
        from engine.openvino_backend import check_precision

        return check_precision(precision)
    if precision == "bf16":
        raise DemixerError("ONNX Runtime runs fp32 only, not bf16; use --backend openvino "
                           "--precision bf16 for a faster mode.")
    if precision != "fp32":
        raise DemixerError(f"ONNX Runtime runs fp32 only, not {precision}.")
    return precision


def predict_in_groups(run: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
                      spec: np.ndarray, wave: np.ndarray, batch: int, shapes: CoreShapes,
                      label: str) -> tuple[np.ndarray, np.ndarray]:
    """`predict` for a core compiled for a fixed `batch`: any number B of chunks, cut into
    groups of `batch`, the last one padded with copies of its last chunk (real audio keeps the
    maths tame; their outputs are dropped). `run` takes exactly `batch` chunks (float32,
    C-contiguous). Shapes as `Backend.predict`; a ValueError for wrong ones."""
    spec = np.ascontiguousarray(spec, dtype=np.float32)
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    count = spec.shape[0]
    if spec.shape[1:] != shapes.spec_shape or wave.shape != (count, *shapes.wave_shape):
        raise ValueError(f"{label} core expects spec (B, {shapes.spec_shape}) and wave "
                         f"(B, {shapes.wave_shape}), got {spec.shape} and {wave.shape}")
    outs = []
    for i in range(0, count, batch):
        s, w = spec[i:i + batch], wave[i:i + batch]
        missing = batch - s.shape[0]
        if missing:
            s = np.concatenate([s, np.repeat(s[-1:], missing, axis=0)])
            w = np.concatenate([w, np.repeat(w[-1:], missing, axis=0)])
        spec_out, time_out = run(s, w)
        outs.append((spec_out[:batch - missing], time_out[:batch - missing]))
    if len(outs) == 1:
        return outs[0]
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


def check_precision(kind: str, precision: str | None) -> None:
    """A precision the resolved backend `kind` does not have is a usage error (None: its
    default)."""
    if precision is None:
        return
    if kind in EXPORTED_KINDS:
        check_exported_precision(kind, precision)
        return
    allowed: tuple[str, ...]
    if kind == "mlx":
        from engine.mlx_backend import MLX_PRECISIONS as allowed
    elif kind == "coreml":
        from engine.coreml.convert import PRECISIONS as allowed
    else:
        allowed = PRECISIONS
    if precision not in allowed:
        raise DemixerError(f"The {kind} backend has no precision '{precision}'; "
                           f"use {', '.join(allowed)}.")
