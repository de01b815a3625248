"""Conversion: the network core (`engine.core.HTDemucsCore`) to a CoreML ML Program.

`convert_core(model, out_dir, ...)` traces the core of one HTDemucs with the shapes of the
model's own segment and converts it with coremltools to `out_dir/core.mlpackage` (ML Program,
macOS 13+), then, on macOS only, compiles it to `out_dir/core.mlmodelc`. Caching, locking and
atomic publication are `engine.coreml.cache`'s job; this module only writes into `out_dir`.

The package (B = the batch size it was converted for, see `engine.core` for the layout):
    inputs  spec (B, 2C, F, T) float32, wave (B, C, L) float32
    outputs spec_out (B, S, 2C, F, T) float32, time_out (B, S, C, L) float32
Precision only changes the arithmetic inside; inputs and outputs are always float32.
  mixed  FP16, except the ops that overflow or lose accuracy in FP16 (`FP32_OPS`: powers,
         square roots, divisions, reductions, normalisations, softmax, matmul) - the default
  fp16   everything FP16;  fp32  everything FP32 (the reference for parity checks)
Compression (optional, on the weights in their final precision): `6bit` palettizes them
with a 1-D k-means look-up table per tensor, `8bit` quantizes them linearly (int8, per
channel). Only weights of 2048 elements or more are compressed (coremltools's default).

coremltools 9.0 with torch 2.13 needs two fixes (DESIGN.md): the MHA fast path is switched
off while tracing (its `_native_multi_head_attention` has no converter) and the `int` op gets
a converter that accepts a one-element array (`register_int_fix`, registered once).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import CancelFlag, DemixerError, check_cancel
from engine.shapes import CoreShapes

if TYPE_CHECKING:
    import torch
    from torch import nn

# NB: torch is imported by the functions that trace, not here: the progress type and the
# option lists of this module are used by torch-free starts (OpenVINO, ONNX Runtime).

CONVERSION_VERSION = 2  # bump when the converted graph changes: it is part of the cache key
PRECISIONS = ("mixed", "fp16", "fp32")
COMPRESSIONS = ("6bit", "8bit")
STAGES = ("load", "trace", "convert", "optimise", "save", "compile")
INPUT_NAMES = ("spec", "wave")
OUTPUT_NAMES = ("spec_out", "time_out")
PACKAGE_NAME = "core.mlpackage"
COMPILED_NAME = "core.mlmodelc"
META_PREFIX = "demixer."

# Where each stage starts on the overall 0..1 progress bar (tracing and converting dominate).
_STAGE_START = {"load": 0.0, "trace": 0.05, "convert": 0.35, "optimise": 0.8, "save": 0.9,
                "compile": 0.95}

# Kept in FP32 in `mixed` mode. GroupNorm reaches MIL decomposed (reduce_mean, sub, square,
# reduce_mean, sqrt, real_div), so `square` is listed with `pow` to keep variances in range.
FP32_OPS = frozenset({
    "pow", "square", "sqrt", "rsqrt", "real_div", "inverse",
    "reduce_mean", "reduce_sum", "reduce_sum_square", "reduce_max", "reduce_min",
    "reduce_prod", "reduce_l1_norm", "reduce_l2_norm", "reduce_log_sum", "reduce_log_sum_exp",
    "layer_norm", "instance_norm", "batch_norm", "l2_norm", "local_response_norm",
    "softmax", "matmul",
})


@dataclass(frozen=True)
class ConvertProgress:
    """One progress event: `stage` in `STAGES`, `fraction` of the whole conversion (0..1)."""

    stage: str
    fraction: float
    message: str


ProgressCallback = Callable[[ConvertProgress], None]


@dataclass(frozen=True)
class ConvertOptions:
    """What a package is converted for; every field is part of the cache key.

    The segment is the model's own (a bag's `segment` override is already set on its members
    by demucs's `BagOfModels`), so it is not an option here; the cache keys it separately.
    """

    precision: str = "mixed"
    compress: str | None = None  # None, "6bit" or "8bit"
    batch: int = 1

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise DemixerError(f"Unknown precision '{self.precision}'; use "
                               f"{', '.join(PRECISIONS)}.")
        if self.compress is not None and self.compress not in COMPRESSIONS:
            raise DemixerError(f"Unknown compression '{self.compress}'; use "
                               f"{' or '.join(COMPRESSIONS)}.")
        if not 1 <= self.batch <= 64:
            raise DemixerError(f"The batch size must be between 1 and 64, not {self.batch}.")


DEFAULT_OPTIONS = ConvertOptions()


@dataclass(frozen=True)
class ConversionResult:
    package: Path
    compiled: Path | None  # the compiled .mlmodelc (macOS only)
    metadata: dict[str, str]
    seconds: float
    package_bytes: int


def emit(progress: ProgressCallback | None, stage: str, message: str,
         within: float = 0.0) -> None:
    """Report `stage` (`within` = how far into it, 0..1) to `progress`, if any."""
    if progress is None:
        return
    start = _STAGE_START[stage]
    following = [v for v in _STAGE_START.values() if v > start]
    end = min(following) if following else 1.0
    progress(ConvertProgress(stage, round(start + within * (end - start), 4), message))


# --- coremltools: import, quiet, fixes ---------------------------------------------------


def import_coremltools() -> ModuleType:
    """coremltools, imported without its import-time warnings (no native runtime on Linux,
    untested torch version) - they are noise to a user. A `DemixerError` if it is missing."""
    ct_logger = logging.getLogger("coremltools")
    level = ct_logger.level
    ct_logger.setLevel(logging.ERROR)
    try:
        import coremltools
    except ImportError as exc:
        raise DemixerError(f"coremltools is not installed ({exc}); CoreML conversion needs it "
                           f"(pip install coremltools==9.0).") from exc
    finally:
        ct_logger.setLevel(level)
    return coremltools


def coremltools_version() -> str:
    return str(import_coremltools().__version__)


@contextmanager
def mha_fastpath_disabled() -> Iterator[None]:
    """The MHA fast path off, for tracing only: it emits `_native_multi_head_attention`,
    which coremltools cannot convert. The previous setting is restored afterwards."""
    import torch

    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


_int_fix_lock = threading.Lock()
_int_fix_registered = False
# The settings `quiet_conversion` and tracing change are process-global: one conversion at a
# time per process (the file lock in engine.coreml.cache serialises processes).
_conversion_lock = threading.Lock()


def register_int_fix() -> bool:
    """Override coremltools's `int` converter once per process; True if this call did it.

    coremltools 9.0 does `int(x.val)` on a constant that can be a one-element array, which
    numpy 2 refuses ("only 0-dimensional arrays can be converted to Python scalars").
    """
    global _int_fix_registered
    with _int_fix_lock:
        if _int_fix_registered:
            return False
        import_coremltools()
        from coremltools.converters.mil import Builder as mb
        from coremltools.converters.mil.frontend.torch import ops
        from coremltools.converters.mil.frontend.torch.torch_op_registry import (
            register_torch_op,
        )

        def int_of_one_element(context: Any, node: Any) -> None:
            x = ops._get_inputs(context, node, expected=1)[0]
            if x.can_be_folded_to_const() and np.size(x.val) == 1:
                value = int(np.asarray(x.val).reshape(()))
                context.add(mb.const(val=value, name=node.name), node.name)
            else:
                ops._int(context, node)  # tensors: coremltools's own cast is right

        int_of_one_element.__name__ = "int"  # the registry keys converters by function name
        register_torch_op(int_of_one_element, override=True)
        _int_fix_registered = True
        return True


ItemHook = Callable[[str, int, int, Any], None]  # (loop description, index, length, item)


def _observed(on_item: ItemHook | None) -> Callable[..., Iterator[Any]]:
    """A stand-in for the `tqdm` coremltools wraps its loops in: no bar, and each item (a
    torch node, a graph pass, a weight) is shown to `on_item` as the loop reaches it."""
    def loop(iterable: Any, desc: str = "", **_: Any) -> Iterator[Any]:
        items = list(iterable)
        for index, item in enumerate(items):
            if on_item is not None:
                on_item(desc, index, len(items), item)
            yield item
    return loop


@contextmanager
def quiet_conversion(on_item: ItemHook | None = None) -> Iterator[None]:
    """Silence coremltools's progress bars and precision notes while converting (the caller
    reports progress by stage); `on_item` sees its loops go by (and may raise to stop)."""
    import_coremltools()
    from coremltools.converters.mil.frontend.torch import ops
    from coremltools.converters.mil.mil.passes import pass_pipeline
    from coremltools.optimize.coreml import _quantization_passes

    loops = [(ops, "_tqdm"), (pass_pipeline, "tqdm"), (_quantization_passes, "tqdm")]
    saved = [getattr(module, name) for module, name in loops]
    ct_logger = logging.getLogger("coremltools")
    level = ct_logger.level
    ct_logger.setLevel(logging.ERROR)
    for module, name in loops:
        setattr(module, name, _observed(on_item))
    try:
        yield
    finally:
        for (module, name), original in zip(loops, saved, strict=True):
            setattr(module, name, original)
        ct_logger.setLevel(level)


class _PipelineProgress:
    """Turns coremltools's loops into convert / optimise progress events, 5 % apart, and
    checks `cancel` as they go (so a cancel does not wait for the whole conversion)."""

    # (loop description prefix, share of the convert stage where it starts, where it ends)
    PHASES = (("Converting PyTorch Frontend", 0.0, 0.3), ("Running MIL frontend", 0.3, 0.35),
              ("Running MIL default pipeline", 0.35, 0.95), ("Running MIL backend", 0.95, 1.0))

    def __init__(self, progress: ProgressCallback | None, cancel: CancelFlag | None,
                 options: ConvertOptions) -> None:
        self.progress, self.cancel, self.options = progress, cancel, options
        self.stage, self.shown = "convert", 0.0

    def _show(self, stage: str, within: float, message: str) -> None:
        if stage != self.stage or within >= self.shown + 0.05:
            self.stage, self.shown = stage, within
            emit(self.progress, stage, message, within)

    def __call__(self, desc: str, index: int, length: int, item: Any) -> None:
        check_cancel(self.cancel)
        done = index / max(1, length)
        if str(item).startswith("compression::") or desc.startswith("Running compression"):
            self._show("optimise", done if desc.startswith("Running compression") else 0.0,
                       f"Compressing the weights ({self.options.compress})")
            return
        for prefix, start, end in self.PHASES:
            if desc.startswith(prefix) and self.stage == "convert":
                self._show("convert", start + done * (end - start),
                           f"Converting to an ML Program ({self.options.precision} precision)")


# --- the stages -----------------------------------------------------------------------------


def example_inputs(shapes: CoreShapes, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random (spec, wave) of the package's shapes, float32."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    spec = torch.randn((batch, *shapes.spec_shape), generator=gen)
    wave = torch.randn((batch, *shapes.wave_shape), generator=gen)
    return spec, wave


def trace_core(model: nn.Module, batch: int = 1) -> tuple[torch.jit.ScriptModule, CoreShapes]:
    """TorchScript of the core of `model` (an HTDemucs, not a bag) at its own segment."""
    import torch

    from engine.core import HTDemucsCore

    core = HTDemucsCore(model).eval()
    spec, wave = example_inputs(core.shapes, batch)
    # check_trace=False: the check re-runs the whole network (30 s for the real one).
    with torch.no_grad(), mha_fastpath_disabled(), warnings.catch_warnings():
        # The shapes are fixed by design, so "might not generalize" warnings are noise; and
        # TorchScript is deprecated, but it is the path coremltools 9.0 converts best.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", r"`torch\.jit\.trace", DeprecationWarning)
        traced = torch.jit.trace(core, (spec, wave), check_trace=False)
    return traced, core.shapes


def keep_fp16(op: Any) -> bool:
    """The `mixed` precision op selector: True = compute this MIL op in FP16."""
    return op.op_type not in FP32_OPS


def _compute_precision(precision: str) -> Any:
    ct = import_coremltools()
    if precision == "fp32":
        return ct.precision.FLOAT32
    if precision == "fp16":
        return ct.precision.FLOAT16
    return ct.transform.FP16ComputePrecision(op_selector=keep_fp16)


def compression_pass(compress: str) -> tuple[str, Any]:
    """The coremltools graph pass and its config for `compress` ("6bit" or "8bit")."""
    import_coremltools()
    import coremltools.optimize.coreml as cto

    if compress == "6bit":
        op: Any = cto.OpPalettizerConfig(mode="custom", lut_function=kmeans_lut)
        return "compression::palettize_weights", cto.OptimizationConfig(global_config=op)
    op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8")
    return "compression::linear_quantize_weights", cto.OptimizationConfig(global_config=op)


def to_mlprogram(traced: torch.jit.ScriptModule, shapes: CoreShapes, batch: int,
                 precision: str, compress: str | None = None) -> Any:
    """The traced core as an in-memory `MLModel` (ML Program, macOS 13+), float32 I/O.

    Compression runs as the last pass of the conversion's own pipeline, on the final (FP16 or
    FP32) weights: `coremltools.optimize` on a finished model would run every pass again.
    """
    ct = import_coremltools()
    register_int_fix()
    inputs = [ct.TensorType(name=INPUT_NAMES[0], shape=(batch, *shapes.spec_shape),
                            dtype=np.float32),
              ct.TensorType(name=INPUT_NAMES[1], shape=(batch, *shapes.wave_shape),
                            dtype=np.float32)]
    outputs = [ct.TensorType(name=n, dtype=np.float32) for n in OUTPUT_NAMES]
    pipeline = ct.PassPipeline.DEFAULT
    if compress is not None:
        name, config = compression_pass(compress)
        pipeline.append_pass(name)
        pipeline.set_options(name, {"config": config})
    return ct.convert(traced, inputs=inputs, outputs=outputs, convert_to="mlprogram",
                      minimum_deployment_target=ct.target.macOS13,
                      compute_precision=_compute_precision(precision), pass_pipeline=pipeline,
                      skip_model_load=True)


def kmeans_lut(weight: np.ndarray, nbits: int = 6, iterations: int = 40) -> tuple[np.ndarray,
                                                                                  np.ndarray]:
    """A 1-D k-means look-up table for one weight tensor: (lut (2**nbits,), indices uint8).

    coremltools's own "kmeans" mode needs scikit-learn or kmeans1d; this is Lloyd's algorithm
    over the tensor's distinct values weighted by their counts (few for FP16 weights).
    """
    size = 1 << nbits
    values, inverse, counts = np.unique(weight.reshape(-1), return_inverse=True,
                                        return_counts=True)
    v = values.astype(np.float64)
    lut = np.zeros(size, np.float64)
    if len(v) <= size:
        lut[: len(v)] = v
        return lut.astype(weight.dtype), inverse.reshape(-1).astype(np.uint8)
    cumulative = np.cumsum(counts)
    quantiles = (np.arange(size) + 0.5) / size * cumulative[-1]
    centroids = v[np.searchsorted(cumulative, quantiles)]
    for _ in range(iterations):
        assign = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, v)
        mass = np.bincount(assign, weights=counts, minlength=size)
        total = np.bincount(assign, weights=v * counts, minlength=size)
        updated = np.sort(np.where(mass > 0, total / np.maximum(mass, 1), centroids))
        if np.allclose(updated, centroids, rtol=0, atol=1e-9):
            break
        centroids = updated
    assign = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, v)
    return centroids.astype(weight.dtype), assign[inverse.reshape(-1)].astype(np.uint8)


def package_metadata(name: str, shapes: CoreShapes, checkpoint_sha256: str,
                     options: ConvertOptions) -> dict[str, str]:
    """What the package says about itself (`user_defined_metadata`, strings only)."""
    segment = Fraction(shapes.segment_samples, shapes.samplerate)
    fields = {
        "model": name, "sources": ",".join(shapes.sources), "samplerate": shapes.samplerate,
        "segment": str(segment), "segment_samples": shapes.segment_samples,
        "checkpoint_sha256": checkpoint_sha256, "precision": options.precision,
        "compression": options.compress or "none", "batch": options.batch,
        "coremltools_version": coremltools_version(),
        "conversion_version": CONVERSION_VERSION, "shapes": json.dumps(asdict(shapes)),
    }
    return {META_PREFIX + k: str(v) for k, v in fields.items()}


def shapes_from_metadata(metadata: dict[str, str]) -> CoreShapes:
    raw = json.loads(metadata[META_PREFIX + "shapes"])
    raw["sources"] = tuple(raw["sources"])
    return CoreShapes(**raw)


def _describe(mlmodel: Any, name: str, metadata: dict[str, str]) -> None:
    mlmodel.user_defined_metadata.update(metadata)
    mlmodel.author = "Demixer"
    mlmodel.short_description = f"HTDemucs core of {name} (STFT and iSTFT run outside)"
    mlmodel.version = str(CONVERSION_VERSION)
    mlmodel.input_description["spec"] = "complex-as-channels spectrogram (B, 2C, F, T)"
    mlmodel.input_description["wave"] = "normalised waveform (B, C, L)"
    mlmodel.output_description["spec_out"] = "spectral branch (B, S, 2C, F, T)"
    mlmodel.output_description["time_out"] = "time branch (B, S, C, L)"


def directory_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def compile_package(package: Path, destination: Path) -> Path:
    """Compile to `.mlmodelc` (macOS only): loading a compiled model skips this every run."""
    import_coremltools()
    from coremltools.models.utils import compile_model

    return Path(compile_model(str(package), str(destination)))


def build_mlmodel(model: nn.Module, name: str, options: ConvertOptions,
                  progress: ProgressCallback | None = None,
                  cancel: CancelFlag | None = None) -> tuple[Any, CoreShapes]:
    """The trace, convert and optimise stages: an in-memory `MLModel` and the core's shapes.

    Compression is the last pass of the conversion pipeline; its events say "optimise".
    """
    with _conversion_lock, quiet_conversion(_PipelineProgress(progress, cancel, options)):
        check_cancel(cancel)
        emit(progress, "trace", f"Tracing the network of {name}")
        traced, shapes = trace_core(model, options.batch)
        check_cancel(cancel)
        emit(progress, "convert", f"Converting to an ML Program ({options.precision} precision)")
        mlmodel = to_mlprogram(traced, shapes, options.batch, options.precision,
                               options.compress)
    return mlmodel, shapes


def convert_core(model: nn.Module, out_dir: Path, *, name: str, checkpoint_sha256: str,
                 options: ConvertOptions = DEFAULT_OPTIONS,
                 progress: ProgressCallback | None = None,
                 cancel: CancelFlag | None = None) -> ConversionResult:
    """Convert the core of `model` (an HTDemucs) into `out_dir` (see the module docstring).

    Emits trace, convert, optimise (only with compression), save and compile (only on
    macOS) events, the last one with fraction 1.0; checks `cancel` between stages and raises
    `Cancelled`. On failure `out_dir` may hold a partial package: the caller discards it.
    """
    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    mlmodel, shapes = build_mlmodel(model, name, options, progress, cancel)
    metadata = package_metadata(name, shapes, checkpoint_sha256, options)
    _describe(mlmodel, name, metadata)
    check_cancel(cancel)
    emit(progress, "save", "Saving the package")
    package = out_dir / PACKAGE_NAME
    mlmodel.save(str(package))
    compiled = None
    if sys.platform == "darwin":
        check_cancel(cancel)
        emit(progress, "compile", "Compiling the package for this Mac")
        compiled = compile_package(package, out_dir / COMPILED_NAME)
    if progress is not None:
        last = "compile" if compiled is not None else "save"
        progress(ConvertProgress(last, 1.0, "Conversion finished"))
    return ConversionResult(package=package, compiled=compiled, metadata=metadata,
                            seconds=time.monotonic() - started,
                            package_bytes=directory_bytes(package))


def read_metadata(package: Path) -> dict[str, str]:
    """The `user_defined_metadata` of a saved package (reads the spec; loads no model)."""
    ct = import_coremltools()
    spec = ct.utils.load_spec(str(package))
    return dict(spec.description.metadata.userDefined)
