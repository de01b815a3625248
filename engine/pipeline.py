"""From a model name to a ready `Separator`: resolve, verify, load, pick the backends."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import torch

from engine.backends import Backend, TorchBackend, check_device, resolve_backend_kind
from engine.download import DownloadProgress
from engine.separator import SeparationOptions, Separator
from engine.store import ResolvedModel, load_model, resolve_model


def make_backends(bag: torch.nn.Module, resolved: ResolvedModel, kind: str, device: str = "cpu",
                  precision: str | None = None, **coreml: object) -> list[Backend]:
    """One backend per bag member. `kind` is 'auto', 'torch' or 'coreml'; `precision` None is
    each backend's default (torch: exact fp32; CoreML: mixed)."""
    kind = resolve_backend_kind(kind)
    if kind == "coreml":  # pragma: no cover - macOS only
        from engine.coreml_backend import coreml_backends_for

        return coreml_backends_for(bag, resolved, precision=precision or "mixed",
                                   **coreml)  # type: ignore[arg-type]
    check_device(device)
    return [TorchBackend(member, device, precision=precision or "fp32")
            for member in bag.models]


def build_separator(name: str, *, repo: Path | None = None, backend: str = "auto",
                    device: str = "cpu", options: SeparationOptions = SeparationOptions(),
                    download: bool = True,
                    progress: Callable[[DownloadProgress], None] | None = None,
                    cancel: threading.Event | None = None, precision: str | None = None,
                    **coreml: object) -> Separator:
    resolve_backend_kind(backend)  # a wrong backend is reported before any download
    resolved = resolve_model(name, repo, download=download, progress=progress, cancel=cancel)
    bag = load_model(resolved)
    backends = make_backends(bag, resolved, backend, device, precision, **coreml)
    return Separator(bag.weights, backends, options)
