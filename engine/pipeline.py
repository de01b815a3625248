"""From a model name to a ready `Separator`: resolve, verify, load, pick the backends."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.backends import Backend, TorchBackend, check_device, resolve_backend_kind
from engine.download import DownloadProgress
from engine.separator import SeparationOptions, Separator
from engine.store import ResolvedModel, load_model, resolve_model


def make_backends(bag: Any, resolved: ResolvedModel, kind: str, device: str = "cpu",
                  precision: str | None = None, *, compute_units: str = "all",
                  convert_progress: Callable[[Any], None] | None = None,
                  cancel: threading.Event | None = None) -> list[Backend]:
    """One backend per bag member. `kind` is 'auto', 'torch' or 'coreml'; `precision` None is
    each backend's default (torch: exact fp32; CoreML: mixed). The first CoreML run converts
    the core (`convert_progress` gets its stages), later runs load the cached package."""
    kind = resolve_backend_kind(kind)
    if kind == "coreml":  # pragma: no cover - macOS only
        from engine.convert import ConvertOptions
        from engine.coreml_backend import coreml_backends_for

        options = ConvertOptions(precision=precision or "mixed")
        return list(coreml_backends_for(bag, resolved, compute_units=compute_units,
                                        options=options, convert_progress=convert_progress,
                                        cancel=cancel))
    check_device(device)
    return [TorchBackend(member, device, precision=precision or "fp32")
            for member in bag.models]


def build_separator(name: str, *, repo: Path | None = None, backend: str = "auto",
                    device: str = "cpu", options: SeparationOptions = SeparationOptions(),
                    download: bool = True,
                    progress: Callable[[DownloadProgress], None] | None = None,
                    cancel: threading.Event | None = None, precision: str | None = None,
                    compute_units: str = "all",
                    convert_progress: Callable[[Any], None] | None = None) -> Separator:
    """Resolve (and download) `name`, verify and load it, and wrap it in a `Separator`.

    `progress` gets download progress, `convert_progress` CoreML conversion stages; `cancel`
    stops either. Raises `DemixerError`s with one sentence for the user."""
    resolve_backend_kind(backend)  # a wrong backend is reported before any download
    resolved = resolve_model(name, repo, download=download, progress=progress, cancel=cancel)
    bag: Any = load_model(resolved)
    backends = make_backends(bag, resolved, backend, device, precision,
                             compute_units=compute_units, convert_progress=convert_progress,
                             cancel=cancel)
    separator = Separator(bag.weights, backends, options)
    separator.model_id = f"{resolved.name}:{','.join(resolved.sha256)}"  # resume's identity
    return separator
