"""Backends run the network core (`engine.core`) on a batch of chunks.

A backend sees only real float32 arrays (see `engine.core` for the layout):
    predict(spec (B, 2C, F, T), wave (B, C, L))
        -> (spec_out (B, S, 2C, F, T), time_out (B, S, C, L))
One backend serves one model (a bag gets one backend per member). `TorchBackend` runs anywhere
(cpu, cuda, mps); `engine.coreml_backend.CoreMLBackend` runs the converted core on macOS;
`engine.mlx_backend.MLXBackend` runs an MLX port of the core (Apple GPU, or MLX's CPU build).
"""

from __future__ import annotations

import platform
import sys
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from engine.allocator import RELEASE_EVERY, keep_freed_memory, release_freed
from engine.core import CoreShapes, HTDemucsCore
from engine.errors import DemixerError
from engine.torch_kernels import use_fast_kernels


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
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                    enabled=self.precision == "bf16"):
            s = torch.from_numpy(np.ascontiguousarray(spec)).to(self.device)
            w = torch.from_numpy(np.ascontiguousarray(wave)).to(self.device)
            spec_out, time_out = self.core(s, w)
            return spec_out.float().cpu().numpy(), time_out.float().cpu().numpy()


def check_device(device: str) -> str:
    """Validate a torch device name early, with one sentence instead of a traceback."""
    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise DemixerError("Device 'cuda' is not available on this machine; use -d cpu.")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise DemixerError("Device 'mps' is not available on this machine; use -d cpu.")
    if kind not in ("cpu", "cuda", "mps"):
        raise DemixerError(f"Unknown device '{device}'; use cpu, cuda or mps.")
    return device


def coreml_supported() -> bool:
    """CoreML prediction needs macOS 13 or later."""
    if sys.platform != "darwin":
        return False
    major = int((platform.mac_ver()[0] or "0").split(".")[0])
    return major >= 13


BACKEND_KINDS = ("auto", "torch", "coreml", "mlx")


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
    if kind not in BACKEND_KINDS:
        raise DemixerError(f"Unknown backend '{kind}'; use {', '.join(BACKEND_KINDS)}.")
    return kind


def check_precision(kind: str, precision: str | None) -> None:
    """A precision the resolved backend `kind` does not have is a usage error (None: its
    default)."""
    if precision is None:
        return
    allowed: tuple[str, ...]
    if kind == "mlx":
        from engine.mlx_backend import MLX_PRECISIONS as allowed
    elif kind == "coreml":
        from engine.convert import PRECISIONS as allowed
    else:
        allowed = PRECISIONS
    if precision not in allowed:
        raise DemixerError(f"The {kind} backend has no precision '{precision}'; "
                           f"use {', '.join(allowed)}.")
