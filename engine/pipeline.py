"""From a model name to a ready `Separator`: resolve, verify, load, pick the backends."""

from __future__ import annotations

import threading
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
from engine.download import DownloadProgress
from engine.separator import SeparationOptions, Separator
from engine.store import ResolvedModel, load_model, resolve_model


def make_backends(bag: Any, resolved: ResolvedModel, kind: str, device: str = "cpu",
                  precision: str | None = None, *, compute_units: str = "all",
                  convert_progress: Callable[[Any], None] | None = None,
                  cancel: threading.Event | None = None,
                  threads: int | None = None) -> list[Backend]:
    """One backend per bag member. `kind` is 'auto' or one of `engine.backends.KINDS`;
    `precision` None is each backend's default (torch, OpenVINO, ONNX Runtime: exact fp32;
    CoreML: mixed). The first CoreML run converts the core, the first OpenVINO / ONNX Runtime
    run exports it (`convert_progress` gets the stages); later runs load the cache. `bag`
    may be None for the exported kinds: the checkpoints are then loaded only to export.
    `threads` is the exported runtimes' thread count (None = every core)."""
    kind = resolve_backend_kind(kind)
    if kind == "coreml":  # pragma: no cover - macOS only
        from engine.convert import ConvertOptions
        from engine.coreml_backend import coreml_backends_for

        options = ConvertOptions(precision=precision or "mixed")
        return list(coreml_backends_for(bag, resolved, compute_units=compute_units,
                                        options=options, convert_progress=convert_progress,
                                        cancel=cancel))
    if kind in EXPORTED_KINDS:
        return _exported_backends(bag, resolved, kind, check_exported_precision(kind, precision),
                                  convert_progress, cancel, threads)
    check_device(device)
    return [TorchBackend(member, device, precision=precision or "fp32")
            for member in bag.models]


def _exported_backends(bag: Any, resolved: ResolvedModel, kind: str, precision: str,
                       progress: Callable[[Any], None] | None, cancel: threading.Event | None,
                       threads: int | None) -> list[Backend]:
    if kind == "openvino":
        from engine.openvino_backend import openvino_backends_for

        return list(openvino_backends_for(bag, resolved, precision=precision, progress=progress,
                                          cancel=cancel, threads=threads))
    from engine.onnxruntime_backend import onnxruntime_backends_for

    provider = "coreml" if kind == "onnxruntime-coreml" else "cpu"
    return list(onnxruntime_backends_for(bag, resolved, precision=precision, provider=provider,
                                         progress=progress, cancel=cancel, threads=threads))


def bag_weights(resolved: ResolvedModel, sources: int) -> list[list[float]]:
    """The bag's weights (member x source) as demucs's `BagOfModels` sets them: the bag
    file's, else all ones - without loading the checkpoints."""
    if resolved.weights is not None:
        return [list(row) for row in resolved.weights]
    return [[1.0] * sources for _ in resolved.checkpoints]


def build_separator(name: str, *, repo: Path | None = None, backend: str = "auto",
                    device: str = "cpu", options: SeparationOptions = SeparationOptions(),
                    download: bool = True,
                    progress: Callable[[DownloadProgress], None] | None = None,
                    cancel: threading.Event | None = None, precision: str | None = None,
                    compute_units: str = "all",
                    convert_progress: Callable[[Any], None] | None = None,
                    threads: int | None = None) -> Separator:
    """Resolve (and download) `name`, verify and load it, and wrap it in a `Separator`.

    `progress` gets download progress, `convert_progress` CoreML conversion or ONNX export
    stages; `cancel` stops either. The exported kinds (OpenVINO, ONNX Runtime) load the
    checkpoints only when they must export: a start from the cache needs no torch at all.
    Raises `DemixerError`s with one sentence for the user."""
    kind = resolve_backend_kind(backend)  # a wrong backend is reported before any download
    if kind in EXPORTED_KINDS:
        check_exported_precision(kind, precision)
    resolved = resolve_model(name, repo, download=download, progress=progress, cancel=cancel)
    bag: Any = None if kind in EXPORTED_KINDS else load_model(resolved)
    backends = make_backends(bag, resolved, kind, device, precision,
                             compute_units=compute_units, convert_progress=convert_progress,
                             cancel=cancel, threads=threads)
    weights = bag.weights if bag is not None else bag_weights(resolved,
                                                              len(backends[0].shapes.sources))
    return Separator(weights, backends, options)
