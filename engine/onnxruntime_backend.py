"""`ONNXRuntimeBackend`: the core exported to ONNX (engine.onnx_export), run by ONNX Runtime.

Implements the `engine.backends.Backend` protocol:
    predict(spec (B, 2C, F, T) f32, wave (B, C, L) f32)
        -> (spec_out (B, S, 2C, F, T) f32, time_out (B, S, C, L) f32)
for any B (an export has a fixed batch b = `max_batch`; see `predict_in_groups`).

Execution providers:
  cpu     the CPU provider, fp32 (measured 85.8 dB from torch fp32 on the real htdemucs_6s,
          1.25x its speed per segment). No bf16: ONNX Runtime has no bf16 arithmetic on x86,
          and its dynamic int8 did not pay (issue 13).
  coreml  the CoreML provider (macOS builds of onnxruntime list it), ML Program format,
          compute units ALL, the rest of the graph on the CPU provider; its compiled models
          are cached in `data_dir()/onnxruntime-coreml`. A candidate for the calibration.

Threads: `intra_op_num_threads` = the cores given (`-j`, else every core this process may
use), one inter-op thread, sequential execution, and no spinning after a run: a spinning pool
would take the CPU from the post stage that runs between network calls (`host_bound`).

Memory: ONNX Runtime keeps far more than OpenVINO - one real-architecture segment peaks at
3.4 GB (OpenVINO: a whole 20 s song in 1.2 GB, demucs 1.3 GB), see `_session_options`.
"""

from __future__ import annotations

import importlib.util
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
from engine.openvino_backend import default_threads
from engine.shapes import CoreShapes
from engine.store import data_subdir

if TYPE_CHECKING:
    from engine.store import ResolvedModel

PRECISIONS = ("fp32",)
PROVIDERS = ("cpu", "coreml")
COREML_PROVIDER = "CoreMLExecutionProvider"


def onnxruntime_available() -> bool:
    """True if ONNX Runtime is installed (not imported)."""
    return importlib.util.find_spec("onnxruntime") is not None


def coreml_provider_available() -> bool:
    """True if this onnxruntime build has the CoreML execution provider (macOS)."""
    if not onnxruntime_available():
        return False
    import onnxruntime as ort

    return COREML_PROVIDER in ort.get_available_providers()


def available_providers() -> tuple[str, ...]:
    """The providers of `PROVIDERS` this machine can use (for the calibration)."""
    if not onnxruntime_available():
        return ()
    return ("cpu", "coreml") if coreml_provider_available() else ("cpu",)


def _session_options(threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Its memory-pattern planner holds every intermediate of a call at once: peak RSS of one
    # real-architecture segment 4.86 GB with it, 3.36 GB without, at the same speed (best of
    # 3 interleaved: 6.98 / 7.60 s on a loaded machine). The arena stays: without it 2.45 GB
    # but 11.0 s.
    options.enable_mem_pattern = False
    options.log_severity_level = 3  # errors only: its warnings are about its own optimiser
    return options


def _providers(provider: str) -> list[Any]:
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    if provider == "coreml":  # pragma: no cover - macOS only
        if not coreml_provider_available():
            raise DemixerError("ONNX Runtime has no CoreML execution provider on this machine "
                               "(macOS only); use --backend onnxruntime.")
        options = {"ModelFormat": "MLProgram", "MLComputeUnits": "ALL",
                   "ModelCacheDirectory": str(data_subdir("onnxruntime-coreml"))}
        return [(COREML_PROVIDER, options), "CPUExecutionProvider"]
    raise DemixerError(f"Unknown ONNX Runtime provider '{provider}'; use "
                       f"{' or '.join(PROVIDERS)}.")


class ONNXRuntimeBackend:
    """One exported core in an ONNX Runtime session (see the module docstring)."""

    precision = "fp32"

    def __init__(self, onnx_path: Path, shapes: CoreShapes, *, batch: int = 1,
                 provider: str = "cpu", threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # installed but broken (a missing library)
            raise DemixerError(f"ONNX Runtime cannot be loaded ({exc}); use --backend "
                               f"torch.") from exc

        self.provider = provider
        self.name = "onnxruntime" if provider == "cpu" else f"onnxruntime-{provider}"
        self.path, self.shapes, self.max_batch = Path(onnx_path), shapes, batch
        self.threads = threads or default_threads()
        started = time.monotonic()
        try:
            self._session = ort.InferenceSession(str(self.path), _session_options(self.threads),
                                                 providers=_providers(provider))
        except Exception as exc:  # onnxruntime's error types derive from Exception only
            raise DemixerError(f"ONNX Runtime cannot load {self.path} "
                               f"({error_summary(exc)}).") from exc
        self.load_seconds = time.monotonic() - started
        self._lock = threading.Lock()  # NB: one run at a time keeps the pool to its threads

    @classmethod
    def from_file(cls, onnx_path: Path, *, provider: str = "cpu",
                  threads: int | None = None) -> ONNXRuntimeBackend:
        """A backend for any file `demixer models export-onnx` wrote (shapes from its
        metadata)."""
        metadata = read_metadata(onnx_path)
        return cls(onnx_path, shapes_of(metadata, onnx_path),
                   batch=int_field(metadata, "batch", 1), provider=provider, threads=threads)

    @property
    def host_bound(self) -> bool:
        # the CoreML provider computes on the Neural Engine / GPU where it can
        return self.provider == "cpu"

    def _run(self, spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        spec_out, time_out = self._session.run(list(OUTPUT_NAMES),
                                               {INPUT_NAMES[0]: spec, INPUT_NAMES[1]: wave})
        return spec_out, time_out

    def predict(self, spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            return predict_in_groups(self._run, spec, wave, self.max_batch, self.shapes,
                                     "ONNX Runtime")


def onnxruntime_backends_for(bag: Any, resolved: ResolvedModel, *, precision: str = "fp32",
                             provider: str = "cpu", progress: ProgressCallback | None = None,
                             cancel: CancelFlag | None = None, threads: int | None = None,
                             batch: int = 1, opset: int = OPSET) -> list[ONNXRuntimeBackend]:
    """One backend per member of the model `resolved`, exporting on first use.

    `bag` is the loaded `BagOfModels` if the caller has it; None loads the checkpoints (with
    torch) only if an export is missing. `progress` gets the first run's export stages
    (`ConvertProgress`); `cancel` stops an export. `threads`: None = every core."""
    from engine.onnx_cache import ensure_model_onnx

    if not onnxruntime_available():
        raise DemixerError("ONNX Runtime is not installed (pip install onnxruntime); "
                           "use --backend torch.")
    if precision not in PRECISIONS:
        raise DemixerError(f"ONNX Runtime runs fp32 only, not {precision}.")
    exports = ensure_model_onnx(resolved, opset=opset, batch=batch, bag=bag, progress=progress,
                                cancel=cancel)
    exported = not all(e.hit for e in exports)
    if exported:
        emit(progress, "compile", f"Loading into ONNX Runtime ({provider})")
    backends = [ONNXRuntimeBackend(e.path, e.shapes, batch=e.batch, provider=provider,
                                   threads=threads) for e in exports]
    if exported:
        emit(progress, "compile", "Ready", fraction=1.0)
    return backends
