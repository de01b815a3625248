"""`MLXBackend`: the network core in MLX (engine.mlx_core), on Apple Silicon's GPU or a CPU.

Implements the `engine.backends.Backend` protocol:
    predict(spec (B, 2C, F, T) f32, wave (B, C, L) f32)
        -> (spec_out (B, S, 2C, F, T) f32, time_out (B, S, C, L) f32)
for any B >= 1, with the shapes of the model's own segment (a bag's segment override applied
as demucs applies it). MLX runs on its default device: the GPU (Metal) on a Mac, the CPU with
MLX's CPU build on Linux (a test vehicle there: about a minute per real segment).

The weights come from the cache (engine.mlx_cache): converted once from the same demucs
checkpoint the torch backend loads, then loaded with `mx.load`, without unpickling it.

Precisions (`MLX_PRECISIONS`), measured against fp32 on the random-weight models of
`make-test-model`: worst stem of one chunk of a music-like signal (tests/engine/
test_mlx_backend.py; tiny architecture with a 2 s segment, real one with a 1 s segment):
  fp32   everything float32: equals the torch core (relative error <= 7.5e-7, real)
  mixed  the attention products (q.k^T, softmax, times v) in float16, all else float32:
         139.7 dB tiny, 128.6 dB real (MLX's fused attention; its softmax stays float32)
  fp16   everything float16 except the norms' statistics, the softmax and the outer
         (de)normalisation: 65.2 dB tiny, 59.5 dB real - under the 60 dB default gate, over
         the 40 dB fast one. Trained weights may also overflow float16 (CoreML's pure FP16
         did); the calibration's gate decides on the user's machine.
Random weights keep the transformer's LayerScale at 1e-4, which hides most attention error:
only a trained checkpoint shows what `mixed` really costs, so it is gated, never assumed.
bfloat16 was measured and not kept (everything: 46.5 dB tiny; attention only: 139.3 dB, no
better than float16): less precise than float16 with no range problem seen, and emulated on
M1 GPUs. MLX's CPU build computes float16 slower than float32 (no native half arithmetic on
x86), so the reduced precisions only pay on the GPU.

`mx.compile` (the whole core, one shape) was measured on the CPU build and is off: the first
call took 100 s (it compiles C++ kernels with the system compiler), the later ones were within
the noise of the uncompiled core (tiny model, alternating processes: 6.0-8.2 s vs 6.4-7.9 s).
On Metal it is unmeasured; `MLXBackend(..., compile=True)` is there to measure it.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import CancelFlag, DemixerError, check_cancel
from engine.mlx_spec import CoreSpec
from engine.shapes import CoreShapes

if TYPE_CHECKING:
    import mlx.core as mx

    from engine.store import ResolvedModel

MLX_PRECISIONS = ("fp32", "mixed", "fp16")
NOT_INSTALLED = ("MLX is not installed (pip install mlx on an Apple Silicon Mac, "
                 "'mlx[cpu]' on Linux); use --backend torch.")


@functools.cache
def mlx_available() -> bool:
    """True if MLX imports and computes on this machine (its GPU or its CPU build)."""
    try:
        import mlx.core as mx

        value = mx.sum(mx.array([1.0, 2.0]))
        mx.eval(value)
        return bool(value.item() == 3.0)
    except Exception:  # not installed, no Metal device, a broken wheel: all mean "no MLX"
        return False


def check_precision(precision: str) -> str:
    if precision not in MLX_PRECISIONS:
        raise DemixerError(f"Unknown precision '{precision}' for the MLX backend; "
                           f"use {', '.join(MLX_PRECISIONS)}.")
    return precision


def shapes_from_spec(spec: CoreSpec, segment: float | Fraction | None = None) -> CoreShapes:
    """`engine.core.core_shapes` from the stored architecture. `segment` is a bag's override,
    applied as demucs's BagOfModels does for an HTDemucs: only if it is not longer."""
    seconds = spec.segment_fraction
    if segment is not None and Fraction(segment) <= seconds:
        seconds = Fraction(segment)
    samples = int(seconds * spec.samplerate)
    return CoreShapes(samplerate=spec.samplerate, segment_samples=samples,
                      channels=spec.audio_channels, sources=spec.sources, nfft=spec.nfft,
                      hop=spec.hop, freqs=spec.nfft // 2, frames=math.ceil(samples / spec.hop))


def _dtypes(precision: str) -> tuple[mx.Dtype, mx.Dtype]:
    """(attention dtype, compute dtype) of a precision."""
    import mlx.core as mx

    return {"fp32": (mx.float32, mx.float32), "mixed": (mx.float16, mx.float32),
            "fp16": (mx.float16, mx.float16)}[precision]


class MLXBackend:
    """One model's core in MLX (see the module docstring)."""

    name = "mlx"

    def __init__(self, spec: CoreSpec, weights: dict[str, mx.array], *,
                 precision: str = "fp32", segment: float | Fraction | None = None,
                 max_batch: int = 1, compile: bool = False) -> None:
        import mlx.core as mx

        from engine.mlx_core import MLXCore

        self.precision = check_precision(precision)
        self.shapes = shapes_from_spec(spec, segment)
        self.max_batch = max_batch
        attention, compute = _dtypes(precision)
        self.net = MLXCore(spec, attention_dtype=attention, compute_dtype=compute)
        self.net.load_weights(list(weights.items()))
        if compute != mx.float32:
            self.net.set_dtype(compute)
        mx.eval(self.net.parameters())
        self.device = mx.default_device()
        self._forward: Callable[..., Any] = mx.compile(self.net) if compile else self.net
        # NB: one prediction at a time; the separator calls from its job's thread, not the one
        # that built the backend (MLX evaluates on the calling thread's default stream)
        self._lock = threading.Lock()
        if precision != "fp32":
            self.name = f"mlx-{precision}"

    @property
    def host_bound(self) -> bool:
        """True with MLX's CPU build (Linux); False on a Mac, where MLX runs on the GPU."""
        import mlx.core as mx

        return bool(self.device.type == mx.DeviceType.cpu)

    def predict(self, spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import mlx.core as mx

        count = spec.shape[0]
        if spec.shape[1:] != self.shapes.spec_shape or wave.shape != (count,
                                                                      *self.shapes.wave_shape):
            raise ValueError(f"MLX core expects spec (B, {self.shapes.spec_shape}) and wave "
                             f"(B, {self.shapes.wave_shape}), got {spec.shape} and {wave.shape}")
        s = mx.array(np.ascontiguousarray(spec, dtype=np.float32))
        w = mx.array(np.ascontiguousarray(wave, dtype=np.float32))
        with self._lock:
            spec_out, time_out = self._forward(s, w)
            mx.eval(spec_out, time_out)
        return (np.array(spec_out, dtype=np.float32, copy=True),
                np.array(time_out, dtype=np.float32, copy=True))


def _progress_event(progress: Callable[[Any], None] | None, index: int, count: int,
                    message: str, reason: str) -> None:
    """A conversion starts: one `ConvertProgress` (the CLI's stage printer shows it)."""
    if progress is not None:
        from engine.coreml.convert import ConvertProgress

        progress(ConvertProgress("convert", index / count, f"{message} ({reason})"))


def mlx_backends_for(bag: Any, resolved: ResolvedModel, *, precision: str = "fp32",
                     progress: Callable[[Any], None] | None = None,
                     cancel: CancelFlag | None = None) -> list[MLXBackend]:
    """One `MLXBackend` per member of the model `resolved` (a bag has several).

    `bag` is the loaded demucs `BagOfModels` if the caller has it; None loads the checkpoints
    only if a member's weights are not cached yet. `progress` gets a `ConvertProgress` before
    each conversion (the first use of a checkpoint); `cancel` is checked between members.
    Raises `DemixerError` if MLX is missing or the model has a part the port lacks."""
    check_precision(precision)
    if not mlx_available():
        raise DemixerError(NOT_INSTALLED)
    from engine.mlx_cache import ensure_core
    from engine.store import load_model

    loaded: list[Any] = [bag] if bag is not None else []

    def member(index: int) -> Any:
        if not loaded:
            loaded.append(load_model(resolved))
        return loaded[0].models[index]

    count = len(resolved.sha256)
    backends = []
    for index, sha in enumerate(resolved.sha256):
        check_cancel(cancel)
        message = f"model {index + 1}/{count}: converting {resolved.name} for MLX"
        on_convert = functools.partial(_progress_event, progress, index, count, message)
        cached = ensure_core(sha, functools.partial(member, index), on_convert=on_convert)
        backends.append(_backend_from(cached, precision, resolved.segment))
    return backends


def _backend_from(cached: Any, precision: str, segment: float | None) -> MLXBackend:
    try:
        return MLXBackend(cached.spec, cached.load(), precision=precision, segment=segment)
    except ValueError as exc:  # names or shapes of another version's network: never guess
        reason = str(exc).splitlines()[0]
        raise DemixerError(f"The MLX weights {cached.weights} do not fit this version of "
                           f"Demixer ({reason}); delete the file and run again.") from exc
