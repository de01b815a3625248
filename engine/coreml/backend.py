"""`CoreMLBackend`: the converted core (engine.coreml.convert, engine.coreml.cache) on macOS 13+.

Implements the `engine.backends.Backend` protocol with coremltools's `MLModel` (or the
`CompiledMLModel` of the cached `.mlmodelc`):
    predict(spec (B, 2C, F, T) f32, wave (B, C, L) f32)
        -> (spec_out (B, S, 2C, F, T) f32, time_out (B, S, C, L) f32)
for any B: a package is converted for a fixed batch b (`max_batch`), so B is cut into groups
of b and the last group is padded with copies of its last chunk (their outputs are dropped).
Shapes come from the package's own metadata.

Compute units: "all" (default: CPU, GPU and Neural Engine), "cpu_and_gpu", "cpu_only",
"cpu_and_ne". If the model cannot be loaded or run with "all" (the ANE compiler rejects some
graphs), the backend warns (`CoreMLFallbackWarning`) and uses "cpu_and_gpu" instead - unless
`fallback=False` (the calibration: it measures what it asked for, or rejects it).
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.backends import coreml_supported
from engine.coreml.cache import CachedPackage, ensure_model_packages
from engine.coreml.convert import (
    COMPILED_NAME,
    DEFAULT_OPTIONS,
    META_PREFIX,
    PACKAGE_NAME,
    ConvertOptions,
    ProgressCallback,
    import_coremltools,
    read_metadata,
    shapes_from_metadata,
)
from engine.errors import CancelFlag, DemixerError
from engine.options import COMPUTE_UNITS

if TYPE_CHECKING:
    from engine.store import ResolvedModel

FALLBACK_UNITS = "cpu_and_gpu"


class CoreMLFallbackWarning(UserWarning):
    """CoreML could not use the requested compute units; the backend runs on fewer."""


def check_compute_units(units: str) -> str:
    """'ALL', 'cpu-only', ... -> 'all', 'cpu_only'; a `DemixerError` for unknown names."""
    name = units.strip().lower().replace("-", "_")
    if name not in COMPUTE_UNITS:
        raise DemixerError(f"Unknown compute units '{units}'; use {', '.join(COMPUTE_UNITS)}.")
    return name


def _load_predictor(path: Path, units: str) -> Any:
    """A coremltools model ready to `predict` (a compiled `.mlmodelc` or an `.mlpackage`)."""
    ct = import_coremltools()
    unit = getattr(ct.ComputeUnit, units.upper())
    if path.suffix == ".mlmodelc":
        return ct.models.CompiledMLModel(str(path), compute_units=unit)
    return ct.models.MLModel(str(path), compute_units=unit)


def _package_paths(package: CachedPackage | Path) -> tuple[Path, Path | None]:
    """(.mlpackage, .mlmodelc or None) from a cache entry, an entry dir or a package path."""
    if isinstance(package, CachedPackage):
        return package.package, package.compiled
    path = Path(package)
    if path.suffix == ".mlpackage":
        return path, None
    compiled = path / COMPILED_NAME
    return path / PACKAGE_NAME, compiled if compiled.is_dir() else None


class CoreMLBackend:
    """One converted core, loaded with the requested compute units (see module docstring)."""

    name = "coreml"

    def __init__(self, package: CachedPackage | Path, compute_units: str = "all",
                 fallback: bool = True) -> None:
        if not coreml_supported():
            raise DemixerError("CoreML needs macOS 13 or later; use --backend torch")
        self.requested_units = check_compute_units(compute_units)
        self.package_path, self.compiled_path = _package_paths(package)
        self.metadata = read_metadata(self.package_path)
        if META_PREFIX + "shapes" not in self.metadata:
            raise DemixerError(f"{self.package_path} was not converted by Demixer (its "
                               f"metadata has no shapes); run `demixer models convert` again.")
        self.shapes = shapes_from_metadata(self.metadata)
        self.max_batch = int(self.metadata[META_PREFIX + "batch"])
        self.precision = self.metadata[META_PREFIX + "precision"]
        self.compute_units = self.requested_units
        self.fallback = fallback
        self._model = self._load(self.requested_units)
        self._proven = False  # True once a prediction has succeeded
        self._lock = threading.Lock()  # NB: one prediction at a time per loaded model

    @property
    def host_bound(self) -> bool:
        # the ANE and the GPU leave the CPU cores free for the post stage; cpu_only does not
        return self.compute_units == "cpu_only"

    def _load_any(self, units: str) -> Any:
        """The compiled model if there is one, else the package (it compiles on load)."""
        if self.compiled_path is not None:
            try:
                return _load_predictor(self.compiled_path, units)
            except Exception:  # e.g. compiled by an older macOS: the package still works
                pass
        return _load_predictor(self.package_path, units)

    def _fall_back(self, exc: Exception) -> Any:
        warnings.warn(f"CoreML could not use the Neural Engine for {self.package_path.parent.name} "
                      f"({type(exc).__name__}: {exc}); running on CPU and GPU instead.",
                      CoreMLFallbackWarning, stacklevel=3)
        self.compute_units = FALLBACK_UNITS
        return self._load_any(FALLBACK_UNITS)

    def _load(self, units: str) -> Any:
        try:
            return self._load_any(units)
        except Exception as exc:
            if units != "all" or not self.fallback:
                raise DemixerError(f"CoreML cannot load {self.package_path} with compute units "
                                   f"{units} ({type(exc).__name__}: {exc}).") from exc
            return self._fall_back(exc)

    def _run(self, spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feeds = {"spec": spec, "wave": wave}
        try:
            out = self._model.predict(feeds)
        except Exception as exc:
            if self._proven or self.compute_units != "all" or not self.fallback:
                raise
            self._model = self._fall_back(exc)  # the ANE fails some graphs only when run
            out = self._model.predict(feeds)
        self._proven = True
        return (np.asarray(out["spec_out"], dtype=np.float32),
                np.asarray(out["time_out"], dtype=np.float32))

    def _predict_group(self, spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        count = spec.shape[0]
        missing = self.max_batch - count
        if missing:  # pad with copies of the last chunk: real audio keeps the maths tame
            spec = np.concatenate([spec, np.repeat(spec[-1:], missing, axis=0)])
            wave = np.concatenate([wave, np.repeat(wave[-1:], missing, axis=0)])
        spec_out, time_out = self._run(spec, wave)
        return spec_out[:count], time_out[:count]

    def predict(self, spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        spec = np.ascontiguousarray(spec, dtype=np.float32)
        wave = np.ascontiguousarray(wave, dtype=np.float32)
        count = spec.shape[0]
        if spec.shape[1:] != self.shapes.spec_shape or wave.shape != (count,
                                                                      *self.shapes.wave_shape):
            raise ValueError(f"CoreML core expects spec (B, {self.shapes.spec_shape}) and wave "
                             f"(B, {self.shapes.wave_shape}), got {spec.shape} and {wave.shape}")
        b = self.max_batch
        with self._lock:
            groups = [self._predict_group(spec[i:i + b], wave[i:i + b])
                      for i in range(0, count, b)]
        return (np.concatenate([g[0] for g in groups]), np.concatenate([g[1] for g in groups]))


def coreml_backends_for(bag: Any, resolved: ResolvedModel, *, compute_units: str = "all",
                        options: ConvertOptions = DEFAULT_OPTIONS,
                        convert_progress: ProgressCallback | None = None,
                        cancel: CancelFlag | None = None,
                        fallback: bool = True) -> list[CoreMLBackend]:
    """One backend per member of `bag` (loaded from `resolved`), converting on first use.

    `bag` may be None: the checkpoints are then loaded only if a package must be converted.
    `convert_progress` gets the first run's conversion events (the GUI's first-run dialog);
    `fallback` False keeps "all" on the Neural Engine or fails (see the module docstring).
    """
    if not coreml_supported():
        raise DemixerError("CoreML needs macOS 13 or later; use --backend torch")
    units = check_compute_units(compute_units)
    packages = ensure_model_packages(resolved, options, bag=bag, progress=convert_progress,
                                     cancel=cancel)
    return [CoreMLBackend(p, units, fallback) for p in packages]
