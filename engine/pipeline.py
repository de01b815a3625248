"""From a model name to a ready `Separator`: resolve, verify, load, pick the backends.

`--backend auto` (without `--precision`) runs on the calibrated choice for the quality asked
for (`engine.calibrate`: the fastest candidate that passes the gate on this machine,
measured on first use and cached), behind `engine.fallback`'s hand-over to the next passing
candidate should it fail. An explicit backend, precision or compute units bypasses it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.backends import (
    EXPORTED_KINDS,
    Backend,
    TorchBackend,
    check_device,
    check_exported_precision,
    resolve_backend_kind,
)
from engine.calibrate import ProgressFn, calibration_for, check_quality
from engine.candidates import machine_candidates
from engine.download import DownloadProgress
from engine.errors import CancelFlag
from engine.separator import SeparationOptions, Separator
from engine.store import ResolvedModel, load_model, resolve_model


def make_backends(bag: Any, resolved: ResolvedModel, kind: str, device: str = "cpu",
                  precision: str | None = None, *, compute_units: str | None = None,
                  convert_progress: Callable[[Any], None] | None = None,
                  cancel: CancelFlag | None = None,
                  threads: int | None = None) -> list[Backend]:
    """One backend per bag member. `kind` is 'auto' or one of `engine.backends.KINDS`;
    `precision` None is each backend's default (torch, MLX, OpenVINO, ONNX Runtime: exact
    fp32; CoreML: mixed). The first CoreML or MLX run converts the core, the first OpenVINO /
    ONNX Runtime run exports it (`convert_progress` gets the stages); later runs load the
    cache. `bag` may be None for MLX and the exported kinds: the checkpoints are then loaded
    only to convert or export. `threads` is the exported runtimes' thread count (None =
    every core)."""
    kind = resolve_backend_kind(kind)
    if kind == "mlx":
        from engine.mlx_backend import mlx_backends_for

        return list(mlx_backends_for(bag, resolved, precision=precision or "fp32",
                                     progress=convert_progress, cancel=cancel))
    if kind == "coreml":  # pragma: no cover - macOS only
        from engine.coreml.backend import coreml_backends_for
        from engine.coreml.convert import ConvertOptions

        options = ConvertOptions(precision=precision or "mixed")
        return list(coreml_backends_for(bag, resolved, compute_units=compute_units or "all",
                                        options=options, convert_progress=convert_progress,
                                        cancel=cancel))
    if kind in EXPORTED_KINDS:
        return _exported_backends(bag, resolved, kind, check_exported_precision(kind, precision),
                                  convert_progress, cancel, threads)
    check_device(device)
    return [TorchBackend(member, device, precision=precision or "fp32")
            for member in bag.models]


def _exported_backends(bag: Any, resolved: ResolvedModel, kind: str, precision: str,
                       progress: Callable[[Any], None] | None, cancel: CancelFlag | None,
                       threads: int | None) -> list[Backend]:
    if kind == "openvino":
        from engine.openvino_backend import openvino_backends_for

        return list(openvino_backends_for(bag, resolved, precision=precision, progress=progress,
                                          cancel=cancel, threads=threads))
    from engine.onnxruntime_backend import onnxruntime_backends_for

    provider = "coreml" if kind == "onnxruntime-coreml" else "cpu"
    return list(onnxruntime_backends_for(bag, resolved, precision=precision, provider=provider,
                                         progress=progress, cancel=cancel, threads=threads))


class LazyBag:
    """The model's loaded checkpoints (demucs's `BagOfModels`), unpickled - importing torch -
    on first use: a calibrated start whose chosen backend runs from its cache (OpenVINO,
    ONNX Runtime, MLX) never loads them, which saves torch's start-up and about 400 MB of
    peak memory. Any attribute (`models`, `weights`...) loads it."""

    def __init__(self, resolved: ResolvedModel) -> None:
        self._resolved = resolved
        self._bag: Any = None

    @property
    def loaded(self) -> bool:
        return self._bag is not None

    def __getattr__(self, name: str) -> Any:  # only for names the proxy itself lacks
        if self._bag is None:
            self._bag = load_model(self._resolved)
        return getattr(self._bag, name)


def bag_weights(resolved: ResolvedModel, sources: int) -> list[list[float]]:
    """The bag's weights (member x source) as demucs's `BagOfModels` sets them: the bag
    file's, else all ones - without loading the checkpoints."""
    if resolved.weights is not None:
        return [list(map(float, row)) for row in resolved.weights]
    return [[1.0] * sources for _ in resolved.checkpoints]


def uses_calibration(backend: str, precision: str | None, compute_units: str | None,
                     device: str = "cpu") -> bool:
    """Whether these settings leave the choice to the calibration (nothing explicit)."""
    return backend == "auto" and precision is None and compute_units is None and \
        device == "cpu"


def calibrated_backends(bag: Any, resolved: ResolvedModel, quality: str = "default", *,
                        progress: ProgressFn | None = None,
                        convert_progress: Callable[[Any], None] | None = None,
                        cancel: CancelFlag | None = None) -> list[Backend]:
    """One backend per bag member on the calibrated choice for `quality` (calibrating first
    if this machine has no current calibration of this model), handing over to the next
    passing candidate if it fails (`engine.fallback`)."""
    from engine.fallback import fallback_backends

    calibration, _ = calibration_for(bag, resolved, progress=progress,
                                     convert_progress=convert_progress, cancel=cancel)
    here = {c.key: c for c in machine_candidates(include_all=True)}
    order = [here[m.key] for m in calibration.passing(quality) if m.key in here]
    return list(fallback_backends(order, bag, resolved, convert_progress, cancel))


def build_separator(name: str, *, repo: Path | None = None, backend: str = "auto",
                    device: str = "cpu", options: SeparationOptions = SeparationOptions(),
                    download: bool = True,
                    progress: Callable[[DownloadProgress], None] | None = None,
                    cancel: CancelFlag | None = None, precision: str | None = None,
                    compute_units: str | None = None,
                    convert_progress: Callable[[Any], None] | None = None,
                    threads: int | None = None, quality: str = "default",
                    calibrate_progress: ProgressFn | None = None) -> Separator:
    """Resolve (and download) `name`, verify and load it, and wrap it in a `Separator`.

    `progress` gets download progress, `convert_progress` CoreML conversion or ONNX export
    stages, `calibrate_progress` the first run's calibration; `cancel` stops any of them.
    MLX and the exported kinds (OpenVINO, ONNX Runtime), asked for by name, load the
    checkpoints only when they must convert or export: a start from the cache needs no
    unpickling (and the exported kinds no torch at all). Raises
    `DemixerError`s with one sentence for the user."""
    kind = resolve_backend_kind(backend)  # a wrong backend is reported before any download
    check_quality(quality)
    if kind in EXPORTED_KINDS:
        check_exported_precision(kind, precision)
    resolved = resolve_model(name, repo, download=download, progress=progress, cancel=cancel)
    if uses_calibration(backend, precision, compute_units, device):
        lazy_bag = LazyBag(resolved)
        backends = calibrated_backends(lazy_bag, resolved, quality, progress=calibrate_progress,
                                       convert_progress=convert_progress, cancel=cancel)
        bag: Any = lazy_bag if lazy_bag.loaded else None
    else:
        lazy = kind == "mlx" or kind in EXPORTED_KINDS
        bag = None if lazy else load_model(resolved)
        backends = make_backends(bag, resolved, kind, device, precision,
                                 compute_units=compute_units,
                                 convert_progress=convert_progress, cancel=cancel,
                                 threads=threads)
    weights = bag.weights if bag is not None else bag_weights(resolved,
                                                              len(backends[0].shapes.sources))
    separator = Separator(weights, backends, options)
    separator.model_id = f"{resolved.name}:{','.join(resolved.sha256)}"  # resume's identity
    return separator
