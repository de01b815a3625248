"""The backends the calibration may choose from: each a (backend, precision, compute units).

A `Candidate` knows how to build its backends for a loaded model (one per bag member) and
whether the automatic calibration measures it (`auto`; the others only with
`demixer models calibrate --all`). `machine_candidates()` lists what this machine has:

    torch    fp32, bf16 on the CPU (fp32 is the reference: demucs's arithmetic)
    torch    fp32, bf16 on the GPU through MPS (macOS)
    coreml   mixed, fp32 x all, cpu_and_gpu, cpu_and_ne (macOS 13+)
    mlx      its precisions on the GPU (Apple Silicon); its CPU build (Linux) only with --all
    openvino, onnxruntime   on the CPU, from the core exported to ONNX

The MLX, OpenVINO and ONNX Runtime backends live in their own modules
(`engine.mlx_backend`, `engine.openvino_backend`, `engine.onnxruntime_backend`), imported
only when present; a missing module or library makes that kind "not available", with the
reason, and never an error. `library_versions()` and `machine_identity()` key the cache.
"""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.backends import Backend, TorchBackend, coreml_supported
from engine.errors import CancelFlag

if TYPE_CHECKING:
    from engine.store import ResolvedModel

# build(bag, resolved, convert_progress, cancel) -> one backend per bag member
BuildFn = Callable[[Any, "ResolvedModel", Callable[[Any], None] | None,
                    CancelFlag | None], list[Backend]]
LIBRARIES = ("torch", "coremltools", "mlx", "openvino", "onnxruntime")
REFERENCE = ("torch", "fp32", "cpu")


@dataclass(frozen=True)
class Candidate:
    backend: str  # "torch", "coreml", "mlx", "openvino", "onnxruntime", ...
    precision: str
    units: str  # where it computes: "cpu", "mps", "gpu", or CoreML's compute units
    build: BuildFn = field(compare=False, repr=False)
    auto: bool = True  # False: measured only with --all (e.g. MLX's slow CPU build)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.backend, self.precision, self.units)

    @property
    def label(self) -> str:
        return " ".join(self.key)


@dataclass(frozen=True)
class KindStatus:
    """One backend kind on this machine: its candidates, or why there are none."""

    kind: str
    candidates: tuple[Candidate, ...]
    unavailable: str = ""  # the reason, when `candidates` is empty


# --- torch ---------------------------------------------------------------------------------


def _torch_build(device: str, precision: str) -> BuildFn:
    def build(bag: Any, resolved: ResolvedModel, progress: Any, cancel: Any) -> list[Backend]:
        # A GPU backend moves its module: it gets its own copy, so the CPU ones keep theirs.
        own = (lambda m: m) if device == "cpu" else copy.deepcopy
        return [TorchBackend(own(m), device, precision=precision) for m in bag.models]
    return build


def _torch_kinds() -> list[KindStatus]:
    cpu = KindStatus("torch", tuple(Candidate("torch", p, "cpu", _torch_build("cpu", p))
                                    for p in ("fp32", "bf16")))
    if sys.platform != "darwin":
        return [cpu]  # without importing torch: a cached start may not need it at all
    import torch  # pragma: no cover - macOS only

    if not torch.backends.mps.is_available():  # pragma: no cover - macOS only
        return [cpu, KindStatus("torch-mps", (), "PyTorch cannot use this Mac's GPU (MPS)")]
    mps = tuple(Candidate("torch", p, "mps", _torch_build("mps", p))  # pragma: no cover
                for p in ("fp32", "bf16"))
    return [cpu, KindStatus("torch-mps", mps)]  # pragma: no cover - macOS only


# --- CoreML --------------------------------------------------------------------------------

COREML_PRECISIONS = ("mixed", "fp32")
COREML_UNITS = ("all", "cpu_and_gpu", "cpu_and_ne")


def _coreml_build(precision: str, units: str) -> BuildFn:
    def build(bag: Any, resolved: ResolvedModel, progress: Any,
              cancel: Any) -> list[Backend]:  # pragma: no cover - macOS only
        from engine.coreml.backend import coreml_backends_for
        from engine.coreml.convert import ConvertOptions

        # bag=None: a conversion loads pristine checkpoints (the torch candidates have
        # swapped some layers' forwards for faster forms, which must not be traced).
        return list(coreml_backends_for(None, resolved, compute_units=units,
                                        options=ConvertOptions(precision=precision),
                                        convert_progress=progress, cancel=cancel,
                                        fallback=False))
    return build


def _coreml_kind() -> KindStatus:
    if not coreml_supported():
        return KindStatus("coreml", (), "CoreML prediction needs macOS 13 or later")
    if importlib.util.find_spec("coremltools") is None:  # pragma: no cover - macOS only
        return KindStatus("coreml", (), "coremltools is not installed")
    return KindStatus("coreml", tuple(  # pragma: no cover - macOS only
        Candidate("coreml", p, u, _coreml_build(p, u))
        for p in COREML_PRECISIONS for u in COREML_UNITS))


# --- backends in their own modules (imported only when present) ----------------------------


def _module(name: str) -> Any | None:
    """`engine.<name>` if this build has it, else None (without importing anything else)."""
    if importlib.util.find_spec(f"engine.{name}") is None:
        return None
    return importlib.import_module(f"engine.{name}")


def _torch_threads() -> int | None:
    """Torch's thread budget (set by `-j` or by the app's worker), for the other CPU runtimes:
    every candidate then gets the same cores (a fair race) and leaves the GUI its own."""
    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else None


def _factory_build(module: str, factory: str, precision: str, pristine: bool = False,
                   **extra: str) -> BuildFn:
    """Build with `engine.<module>.<factory>(bag, resolved, precision=..., progress=...,
    cancel=..., **extra)`. `pristine` (the ONNX runtimes): pass no bag, so that an export
    loads the checkpoints afresh (the torch candidates swap some layers' forwards for faster
    forms, which must not be traced), and torch's thread count."""
    def build(bag: Any, resolved: ResolvedModel, progress: Any, cancel: Any) -> list[Backend]:
        make = getattr(importlib.import_module(f"engine.{module}"), factory)
        kwargs: dict[str, Any] = dict(extra)
        if pristine:
            kwargs["threads"] = _torch_threads()
        return list(make(None if pristine else bag, resolved, precision=precision,
                         progress=progress, cancel=cancel, **kwargs))
    return build


def _plugin(kind: str, module: str) -> tuple[Any | None, str]:
    """(`engine.<module>`, "") if it is here and says `<kind>_available()`, else (None, why)."""
    try:
        mod = _module(module)
        if mod is None:
            return None, f"engine.{module} is not part of this build"
        if not getattr(mod, f"{kind}_available")():
            return None, f"{kind} is not installed"
    except Exception as exc:  # a broken install: say so, never stop the calibration
        return None, f"{type(exc).__name__}: {exc}"
    return mod, ""


def _precisions(mod: Any, kind: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """What the module can run here (`supported_precisions()`), else its `<KIND>_PRECISIONS`
    or `PRECISIONS`."""
    supported = getattr(mod, "supported_precisions", None)
    if supported is not None:
        return tuple(supported())
    return tuple(getattr(mod, f"{kind.upper()}_PRECISIONS", getattr(mod, "PRECISIONS", default)))


def _mlx_on_gpu() -> bool:
    """Whether MLX runs on a Metal GPU (Apple Silicon), not its CPU build."""
    try:
        import mlx.core as mx

        return bool(mx.metal.is_available())
    except Exception:  # no MLX, or a build without Metal
        return False


def _mlx_kind() -> KindStatus:
    mod, why = _plugin("mlx", "mlx_backend")
    if mod is None:
        return KindStatus("mlx", (), why)
    gpu = _mlx_on_gpu()  # MLX's CPU build (Linux) is a test vehicle taking minutes: --all only
    return KindStatus("mlx", tuple(
        Candidate("mlx", p, "gpu" if gpu else "cpu",
                  _factory_build("mlx_backend", "mlx_backends_for", p), auto=gpu)
        for p in _precisions(mod, "mlx", ("fp32",))))


def _openvino_kind() -> KindStatus:
    mod, why = _plugin("openvino", "openvino_backend")
    if mod is None:
        return KindStatus("openvino", (), why)
    return KindStatus("openvino", tuple(
        Candidate("openvino", p, "cpu",
                  _factory_build("openvino_backend", "openvino_backends_for", p, True))
        for p in _precisions(mod, "openvino", ("fp32",))))


def _onnxruntime_kind() -> KindStatus:
    """ONNX Runtime on the CPU, and through its CoreML provider where it has one (macOS)."""
    mod, why = _plugin("onnxruntime", "onnxruntime_backend")
    if mod is None:
        return KindStatus("onnxruntime", (), why)
    providers = getattr(mod, "available_providers", lambda: ("cpu",))()
    return KindStatus("onnxruntime", tuple(
        Candidate("onnxruntime", p, u, _factory_build(
            "onnxruntime_backend", "onnxruntime_backends_for", p, True, provider=u))
        for p in _precisions(mod, "onnxruntime", ("fp32",)) for u in providers))


def backend_kinds() -> list[KindStatus]:
    """Every backend kind Demixer knows, with its candidates on this machine, in the order
    they are measured (torch first: other runtimes' thread pools must not run beside it)."""
    return [*_torch_kinds(), _coreml_kind(), _mlx_kind(), _openvino_kind(),
            _onnxruntime_kind()]


def machine_candidates(include_all: bool = False) -> list[Candidate]:
    """The candidates of this machine (the reference, torch fp32 cpu, first); `include_all`
    adds those the automatic calibration skips."""
    found = [c for kind in backend_kinds() for c in kind.candidates
             if include_all or c.auto]
    found.sort(key=lambda c: c.key != REFERENCE)  # stable: keeps the kinds' order
    return found


# --- what the cache is keyed on -------------------------------------------------------------


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a backend runs on (absent ones left out)."""
    found = {}
    for dist in LIBRARIES:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def _sysctl(name: str) -> str:
    try:  # pragma: no cover - macOS only
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True,
                              timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):  # pragma: no cover - macOS only
        return ""


def _cpu_name() -> str:
    if sys.platform == "darwin":  # pragma: no cover - macOS only
        return _sysctl("machdep.cpu.brand_string")  # "Apple M2 Pro"
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine_identity() -> dict[str, str]:
    """OS version and machine model: what a calibration's timings belong to."""
    mac = platform.mac_ver()[0]
    identity = {"os": f"macOS {mac}" if mac else platform.platform(terse=True),
                "machine": platform.machine(), "cpu": _cpu_name(),
                "cores": str(os.cpu_count() or 0)}
    if sys.platform == "darwin":  # pragma: no cover - macOS only
        identity["model"] = _sysctl("hw.model")  # "Mac14,9"
    return identity
