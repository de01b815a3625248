"""`OpenVINOBackend`: the core exported to ONNX (engine.onnx_export), compiled by OpenVINO for
this machine's CPU.

Implements the `engine.backends.Backend` protocol:
    predict(spec (B, 2C, F, T) f32, wave (B, C, L) f32)
        -> (spec_out (B, S, 2C, F, T) f32, time_out (B, S, C, L) f32)
for any B (an export has a fixed batch b = `max_batch`; see `predict_in_groups`). Inputs and
outputs are float32 whatever the precision, which only changes the arithmetic inside:
  fp32  exact (OpenVINO's f32; measured 111.7 dB from torch fp32 on the real htdemucs_6s)
  bf16  `INFERENCE_PRECISION_HINT` bf16, on CPUs that have bf16 arithmetic (AVX-512 BF16,
        AMX): about 2.3x torch fp32 per segment here at 50 dB (the fast mode's gate is 40)

Threads: `INFERENCE_NUM_THREADS` = the cores given (`-j`, else every core this process may
use), one stream, the latency hint. Its pool must not compute beside another one (torch's
made torch 5-15x slower): the backend is `host_bound`, so the separator runs the post stage
between network calls, and nothing in Demixer runs torch while this runs.

Compiled models go to OpenVINO's own model cache in `data_dir()/openvino` (`CACHE_DIR`): the
first compile of the real core takes seconds, later starts import the blob. OpenVINO keys a
blob on the ONNX file's path and checks its size and time, so an export made again is compiled
again, and a damaged blob is compiled again (both checked: `tests/engine/test_openvino_backend`).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.backends import predict_in_groups
from engine.errors import CancelFlag, DemixerError
from engine.onnx_export import (
    INPUT_NAMES,
    OPSET,
    OUTPUT_NAMES,
    ProgressCallback,
    emit,
    error_summary,
    int_field,
    read_metadata,
    shapes_of,
)
from engine.shapes import CoreShapes
from engine.store import data_subdir

if TYPE_CHECKING:
    from engine.store import ResolvedModel

PRECISIONS = ("fp32", "bf16")
_HINTS = {"fp32": "f32", "bf16": "bf16"}


def openvino_available() -> bool:
    """True if OpenVINO is installed (not imported: that costs 0.4 s)."""
    return importlib.util.find_spec("openvino") is not None


@functools.cache
def bf16_supported() -> bool:
    """True if OpenVINO's CPU plugin can compute in bf16 on this CPU (AVX-512 BF16 or AMX)."""
    if not openvino_available():
        return False
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def supported_precisions() -> tuple[str, ...]:
    """The precisions this machine can run with OpenVINO, exact first (for the calibration)."""
    if not openvino_available():
        return ()
    return PRECISIONS if bf16_supported() else ("fp32",)


def check_precision(precision: str) -> str:
    """`precision` if OpenVINO can run it here, else a `DemixerError` in one sentence."""
    if precision not in PRECISIONS:
        raise DemixerError(f"OpenVINO runs fp32 or bf16, not {precision}.")
    if precision == "bf16" and not bf16_supported():
        raise DemixerError("This CPU has no bf16 arithmetic for OpenVINO (it needs AVX-512 BF16 "
                           "or AMX); use --precision fp32.")
    return precision


def default_threads() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def compiled_cache_dir() -> Path:
    """OpenVINO's model cache (`CACHE_DIR`): `data_dir()/openvino`."""
    return data_subdir("openvino")


class OpenVINOBackend:
    """One exported core compiled for the CPU (see the module docstring)."""

    def __init__(self, onnx_path: Path, shapes: CoreShapes, *, batch: int = 1,
                 precision: str = "fp32", threads: int | None = None,
                 cache_dir: Path | None = None) -> None:
        try:
            import openvino as ov
        except ImportError as exc:  # installed but broken (a missing library)
            raise DemixerError(f"OpenVINO cannot be loaded ({exc}); use --backend torch.") from exc

        self.precision = check_precision(precision)
        self.name = "openvino" if precision == "fp32" else f"openvino-{precision}"
        self.path, self.shapes, self.max_batch = Path(onnx_path), shapes, batch
        self.threads = threads or default_threads()
        core = ov.Core()
        if cache_dir is not None:
            core.set_property({"CACHE_DIR": str(cache_dir)})
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                  "INFERENCE_NUM_THREADS": self.threads,
                  "INFERENCE_PRECISION_HINT": _HINTS[self.precision]}
        started = time.monotonic()
        try:
            self._compiled = core.compile_model(str(self.path), "CPU", config)
        except RuntimeError as exc:  # OpenVINO raises RuntimeError for unreadable models
            raise DemixerError(f"OpenVINO cannot compile {self.path} "
                               f"({error_summary(exc)}).") from exc
        self.compile_seconds = time.monotonic() - started
        self.from_cache = bool(self._compiled.get_property("LOADED_FROM_CACHE"))
        self._request = self._compiled.create_infer_request()
        self._outputs = [self._compiled.output(n) for n in OUTPUT_NAMES]
        self._lock = threading.Lock()  # NB: one inference at a time per request

    @classmethod
    def from_file(cls, onnx_path: Path, *, precision: str = "fp32", threads: int | None = None,
                  cache_dir: Path | None = None) -> OpenVINOBackend:
        """A backend for any file `demixer models export-onnx` wrote (shapes from its
        metadata)."""
        metadata = read_metadata(onnx_path)
        return cls(onnx_path, shapes_of(metadata, onnx_path), batch=int_field(metadata, "batch", 1),
                   precision=precision, threads=threads, cache_dir=cache_dir)

    @property
    def host_bound(self) -> bool:
        return True

    def _run(self, spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = self._request.infer({INPUT_NAMES[0]: spec, INPUT_NAMES[1]: wave},
                                     share_inputs=True)
        return result[self._outputs[0]], result[self._outputs[1]]

    def predict(self, spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            return predict_in_groups(self._run, spec, wave, self.max_batch, self.shapes,
                                     "OpenVINO")


def _compile_all(exports: list[Any], precision: str, threads: int | None, exported: bool,
                 progress: ProgressCallback | None) -> list[OpenVINOBackend]:
    backends = []
    for index, export in enumerate(exports):
        if exported:  # a first run: the compile follows the export on the progress bar
            emit(progress, "compile", f"Compiling for this CPU with OpenVINO ({precision}), "
                 f"model {index + 1}/{len(exports)}")
        backends.append(OpenVINOBackend(export.path, export.shapes, batch=export.batch,
                                        precision=precision, threads=threads,
                                        cache_dir=compiled_cache_dir()))
    if exported:
        emit(progress, "compile", "Ready", fraction=1.0)
    return backends


def openvino_backends_for(bag: Any, resolved: ResolvedModel, *, precision: str = "fp32",
                          progress: ProgressCallback | None = None,
                          cancel: CancelFlag | None = None, threads: int | None = None,
                          batch: int = 1, opset: int = OPSET) -> list[OpenVINOBackend]:
    """One backend per member of the model `resolved`, exporting on first use.

    `bag` is the loaded `BagOfModels` if the caller has it; None loads the checkpoints (with
    torch) only if an export is missing. `progress` gets the first run's export and compile
    stages (`ConvertProgress`); `cancel` stops an export. `threads`: None = every core."""
    from engine.onnx_cache import ensure_model_onnx

    if not openvino_available():
        raise DemixerError("OpenVINO is not installed (pip install openvino); "
                           "use --backend torch.")
    check_precision(precision)
    exports = ensure_model_onnx(resolved, opset=opset, batch=batch, bag=bag, progress=progress,
                                cancel=cancel)
    return _compile_all(exports, precision, threads, not all(e.hit for e in exports), progress)
