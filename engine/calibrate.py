"""Calibration: the fastest backend that passes a parity gate, measured on this machine.

Every candidate (`engine.candidates`) runs the same fixed chunk (`engine.excerpt`, one
segment) through the separator's own path (STFT -> backend -> iSTFT + time branch,
`Separator.first_chunk`): one warm-up call, then the best of two timed calls, summed over a
bag's members. Its stems are compared with those of PyTorch fp32 on the CPU (the reference,
equal to demucs): the SNR per stem, the worst stem (and member) counting. A candidate that
raises, returns non-finite values or wrong shapes is rejected with that reason; the others
pass a quality gate if their worst stem reaches it:

    exact >= 70 dB    default >= 60 dB    fast >= 40 dB

and the fastest that passes is chosen. The measurements (time and SNR of every candidate)
answer all three gates, so one run serves them all. A `Calibration` is cached per model in
`data_dir()/calibration` (written atomically) with everything it depends on - checkpoint
SHA-256s, candidate set, library versions, Demixer's version, OS and machine - and any
change of those calibrates again. While a candidate runs, a journal names it: if it takes
the process down (a crash in a runtime), the next automatic calibration rejects it instead
of crashing again.
"""

from __future__ import annotations

import gc
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine import __version__
from engine.atomicio import write_text_atomic
from engine.backends import Backend
from engine.candidates import Candidate, library_versions, machine_candidates, machine_identity
from engine.errors import CancelFlag, Cancelled, DemixerError, check_cancel
from engine.excerpt import excerpt
from engine.options import QUALITIES, QUALITY_GATES
from engine.separator import SeparationOptions, Separator
from engine.shapes import CoreShapes
from engine.store import data_dir, data_subdir

if TYPE_CHECKING:
    from engine.store import ResolvedModel

GATES = QUALITY_GATES  # worst-stem SNR, dB
CALIBRATION_VERSION = 1  # bump when the measurement changes: it is part of the cache key
TIMED_CALLS = 2
CRASHED = ("stopped Demixer during an earlier calibration (a crash in its runtime); "
           "`demixer models calibrate` tries it again")


def check_quality(quality: str) -> str:
    if quality not in GATES:
        raise DemixerError(f"Unknown quality '{quality}'; use {', '.join(QUALITIES)}.")
    return quality


@dataclass(frozen=True)
class Measurement:
    """One candidate on the fixed chunk: seconds per chunk and worst-stem SNR, or an error."""

    backend: str
    precision: str
    units: str
    seconds: float | None = None
    snr_db: float | None = None  # inf for the reference itself
    error: str | None = None  # "TypeName: message", or what was wrong with the output

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.backend, self.precision, self.units)

    @property
    def label(self) -> str:
        return " ".join(self.key)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.snr_db is not None and np.isinf(self.snr_db):
            data["snr_db"] = "inf"  # JSON has no infinity
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Measurement:
        snr = data.get("snr_db")
        return cls(str(data["backend"]), str(data["precision"]), str(data["units"]),
                   None if data.get("seconds") is None else float(data["seconds"]),
                   None if snr is None else float(snr), data.get("error"))


@dataclass(frozen=True)
class Row:
    """A line of the calibration table for one quality gate."""

    backend: str
    precision: str
    units: str
    seconds: float | None
    snr_db: float | None  # None for the reference (infinite) and for failures
    passed: bool
    reason: str
    chosen: bool
    snr_text: str = ""  # for tables: "48.0 dB", "reference", "identical" or "-"

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision} {self.units}"

    def as_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision, "units": self.units,
                "seconds": self.seconds, "snr_db": self.snr_db, "passed": self.passed,
                "reason": self.reason}


def verdict(m: Measurement, quality: str) -> str | None:
    """None if `m` passes the gate of `quality`, else why not."""
    if m.error is not None:
        return m.error
    gate = GATES[check_quality(quality)]
    if m.snr_db is None or m.snr_db < gate:
        return f"worst stem {m.snr_db:.1f} dB is below the {quality} gate ({gate:.0f} dB)"
    return None


@dataclass(frozen=True)
class Calibration:
    model: str
    key: dict[str, Any]  # everything the result depends on (see the module docstring)
    measurements: tuple[Measurement, ...]
    seconds: float  # how long calibrating took
    created: str  # ISO 8601, UTC
    path: Path | None = field(default=None, compare=False)  # where it is stored, if it is

    def passing(self, quality: str) -> list[Measurement]:
        """The candidates that pass `quality`'s gate, fastest first (the reference always
        passes; on a tie the earlier measured, so the reference, wins)."""
        good = [m for m in self.measurements if verdict(m, quality) is None]
        return sorted(good, key=lambda m: m.seconds or 0.0)

    def chosen(self, quality: str) -> Measurement:
        return self.passing(quality)[0]

    def table(self, quality: str) -> list[Row]:
        best = self.chosen(quality)
        gate = GATES[quality]
        rows = []
        for index, m in enumerate(self.measurements):
            why = verdict(m, quality)
            if why is None and m == best:
                why = f"chosen: the fastest that passes the {quality} gate ({gate:.0f} dB)"
            elif why is None:
                ratio = (m.seconds or 0.0) / max(best.seconds or 0.0, 1e-9)
                why = f"passed; {ratio:.1f}x slower than {best.label}"
            finite = m.snr_db is not None and bool(np.isfinite(m.snr_db))
            text = "-" if m.snr_db is None else f"{m.snr_db:.1f} dB" if finite else \
                "reference" if index == 0 else "identical"
            rows.append(Row(m.backend, m.precision, m.units, m.seconds,
                            m.snr_db if finite else None, verdict(m, quality) is None,
                            why, m == best, text))
        return rows

    def to_json(self) -> dict[str, Any]:
        return {"format": CALIBRATION_VERSION, "model": self.model, "key": self.key,
                "created": self.created, "seconds": self.seconds,
                "measurements": [m.to_json() for m in self.measurements]}

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path | None = None) -> Calibration:
        return cls(model=str(data["model"]), key=dict(data["key"]),
                   measurements=tuple(Measurement.from_json(m) for m in data["measurements"]),
                   seconds=float(data["seconds"]), created=str(data["created"]), path=path)


@dataclass(frozen=True)
class CalibrationProgress:
    """One step of a calibration: `fraction` of the whole (0..1), the candidate it is at, and
    what is happening; `measurement` is set when that candidate is done."""

    fraction: float
    candidate: str
    message: str
    measurement: Measurement | None = None


ProgressFn = Callable[[CalibrationProgress], None]


# --- measuring -------------------------------------------------------------------------------


class CandidateFailure(Exception):
    """A candidate's output is unusable; the message is the reason shown in the table."""


class _Checked:
    """A backend whose outputs are checked for shape and finiteness before use."""

    def __init__(self, backend: Backend, shapes: CoreShapes) -> None:
        self.backend = backend
        self.shapes = shapes

    def predict(self, spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        spec_out, time_out = self.backend.predict(spec, wave)
        s = self.shapes
        b, n = spec.shape[0], len(s.sources)
        want = ((b, n, *s.spec_shape), (b, n, *s.wave_shape))
        for name, got, shape in zip(("spec_out", "time_out"), (spec_out, time_out), want,
                                    strict=True):
            if tuple(np.shape(got)) != shape:
                raise CandidateFailure(f"returned {name} of shape {tuple(np.shape(got))} "
                                       f"instead of {shape}")
            if not np.isfinite(got).all():
                raise CandidateFailure("returned non-finite values (NaN or infinity)")
        return spec_out, time_out


def describe(exc: BaseException) -> str:
    """'TypeName: message' on one line, short enough for a table."""
    if isinstance(exc, CandidateFailure):
        return str(exc)
    text = " ".join(str(exc).split())
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def worst_snr_db(got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> float:
    """The lowest per-stem SNR over members: arrays (S, C, n); inf where they are equal."""
    worst = float("inf")
    for g, w in zip(got, want, strict=True):
        err = ((g.astype(np.float64) - w) ** 2).sum(axis=(1, 2))
        power = (w.astype(np.float64) ** 2).sum(axis=(1, 2))
        with np.errstate(divide="ignore"):
            snr = 10 * np.log10(np.maximum(power, 1e-30) / err)
        worst = min(worst, float(snr.min()))
    return worst


class _Bench:
    """The fixed chunk, the separator path that runs it, and progress accounting."""

    def __init__(self, bag: Any, steps: int, progress: ProgressFn | None,
                 cancel: CancelFlag | None) -> None:
        first = bag.models[0]
        self.shapes = _shapes_of(first)
        self.sep = Separator([[1.0] * len(self.shapes.sources)], [_NoBackend(self.shapes)],
                             SeparationOptions(shifts=0))
        self.audio = excerpt(self.shapes.samplerate, self.shapes.segment_samples)
        mono = self.audio.mean(axis=0)
        self.mean, self.std = float(mono.mean()), float(mono.std())
        self.steps, self.done = steps, 0
        self.progress, self.cancel = progress, cancel

    def tick(self, label: str, message: str, measurement: Measurement | None = None) -> None:
        if measurement is None:
            self.done += 1
        if self.progress is not None:
            self.progress(CalibrationProgress(min(1.0, self.done / self.steps), label, message,
                                              measurement))

    def check(self) -> None:
        check_cancel(self.cancel)

    def run(self, backend: Backend) -> np.ndarray:
        return self.sep.first_chunk(_Checked(backend, self.shapes),  # type: ignore[arg-type]
                                    self.audio, self.mean, self.std)


class _NoBackend:
    """A placeholder that only carries shapes (the bench passes the backend per call)."""

    name = "none"
    max_batch = 1
    host_bound = True

    def __init__(self, shapes: CoreShapes) -> None:
        self.shapes = shapes

    def predict(self, spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise AssertionError("the calibration bench passes its backend per call")


def _shapes_of(model: Any) -> CoreShapes:
    from engine.core import core_shapes

    return core_shapes(model)


def _time_member(bench: _Bench, backend: Backend, label: str,
                 member: str) -> tuple[np.ndarray, float]:
    """Warm up once, then the best of `TIMED_CALLS` timed calls: (stems, seconds)."""
    bench.check()
    bench.run(backend)
    bench.tick(label, f"warmed up{member}")
    best, stems = float("inf"), None
    for call in range(TIMED_CALLS):
        bench.check()
        t0 = time.perf_counter()
        out = bench.run(backend)
        best = min(best, time.perf_counter() - t0)
        stems = out if stems is None else stems
        bench.tick(label, f"timed call {call + 1} of {TIMED_CALLS}{member}")
    assert stems is not None
    return stems, best


def _measure(candidate: Candidate, bag: Any, resolved: ResolvedModel, bench: _Bench,
             convert_progress: Callable[[Any], None] | None
             ) -> tuple[Measurement, list[np.ndarray] | None]:
    """Build and time `candidate`: its measurement (no SNR yet) and stems per member."""
    label = candidate.label
    bench.tick(label, "preparing")
    backends: list[Backend] = []
    try:
        backends = candidate.build(bag, resolved, convert_progress, bench.cancel)
        stems, seconds = [], 0.0
        for index, backend in enumerate(backends):
            member = f" (model {index + 1} of {len(backends)})" if len(backends) > 1 else ""
            out, best = _time_member(bench, backend, label, member)
            stems.append(out)
            seconds += best
    except Cancelled:
        raise
    except Exception as exc:  # any failure of a candidate is a reason, never a crash
        return Measurement(*candidate.key, error=describe(exc)), None
    finally:
        del backends
        gc.collect()  # release its memory (and a GPU's) before the next one runs
    return Measurement(*candidate.key, seconds=seconds), stems


def _summary(m: Measurement) -> str:
    if m.error is not None:
        return f"rejected: {m.error}"
    snr = "reference" if m.snr_db == float("inf") else f"worst stem {m.snr_db:.1f} dB"
    return f"{m.seconds:.2f} s per chunk, {snr}"


def measure(bag: Any, resolved: ResolvedModel, candidates: Sequence[Candidate], *,
            progress: ProgressFn | None = None,
            convert_progress: Callable[[Any], None] | None = None,
            cancel: CancelFlag | None = None,
            skip: dict[tuple[str, str, str], str] | None = None,
            journal: Callable[[Candidate | None], None] = lambda c: None
            ) -> list[Measurement]:
    """Measure every candidate; the first must be the reference (torch fp32 cpu). `skip`
    gives candidates rejected without running (key -> reason); `journal` is told which
    candidate is running (None when all are done)."""
    members = len(bag.models)
    bench = _Bench(bag, len(candidates) * (1 + members * (1 + TIMED_CALLS)), progress, cancel)
    found: list[Measurement] = []
    reference: list[np.ndarray] | None = None
    for candidate in candidates:
        bench.check()
        if skip and candidate.key in skip:
            m, stems = Measurement(*candidate.key, error=skip[candidate.key]), None
            bench.done += 1 + members * (1 + TIMED_CALLS)
        else:
            journal(candidate)
            m, stems = _measure(candidate, bag, resolved, bench, convert_progress)
        if reference is None:
            if stems is None:
                raise DemixerError(f"The reference backend ({candidate.label}) cannot run "
                                   f"{resolved.name} on this machine ({m.error}).")
            reference = stems
        if stems is not None:
            m = replace(m, snr_db=worst_snr_db(stems, reference))
        found.append(m)
        bench.tick(candidate.label, _summary(m), m)
    journal(None)
    return found


# --- the cache -------------------------------------------------------------------------------


def cache_dir() -> Path:
    return data_subdir("calibration")


def environment_key(resolved: ResolvedModel) -> dict[str, Any]:
    """What a calibration of `resolved` depends on, besides its candidate set."""
    return {"format": CALIBRATION_VERSION, "demixer": __version__,
            "checkpoints": list(resolved.sha256),
            "segment": None if resolved.segment is None else str(resolved.segment),
            "libraries": library_versions(), **machine_identity()}


def cache_path(resolved: ResolvedModel) -> Path:
    digest = hashlib.sha256("".join(resolved.sha256).encode()).hexdigest()
    return cache_dir() / f"{resolved.name}-{digest[:12]}.json"


def load_calibration(path: Path) -> Calibration | None:
    """The calibration stored at `path`, or None if there is none (or it is unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != CALIBRATION_VERSION:
            return None
        return Calibration.from_json(data, path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _is_current(found: Calibration, resolved: ResolvedModel,
                candidates: Sequence[Candidate]) -> bool:
    key = dict(found.key)
    measured = set(key.pop("candidates", []))
    return key == environment_key(resolved) and {c.label for c in candidates} <= measured


def cached_calibrations() -> list[Calibration]:
    """Every stored calibration (any model, current or not), newest first."""
    folder = data_dir() / "calibration"  # (not created just to look)
    found = [load_calibration(p) for p in folder.glob("*.json")]
    return sorted((c for c in found if c is not None), key=lambda c: c.created, reverse=True)


def latest_calibration(model: str) -> Calibration | None:
    """The newest stored calibration of model `model` (for Preferences), if any."""
    return next((c for c in cached_calibrations() if c.model == model), None)


def is_stale(found: Calibration) -> bool:
    """Whether libraries, OS or machine changed since `found` (its model is not checked)."""
    key = dict(found.key)
    now = {"format": CALIBRATION_VERSION, "demixer": __version__,
           "libraries": library_versions(), **machine_identity()}
    return any(key.get(k) != v for k, v in now.items())


# --- crash journal -----------------------------------------------------------------------------


def _journal_path(resolved: ResolvedModel) -> Path:
    return cache_path(resolved).with_suffix(".running")


def _crashed(resolved: ResolvedModel) -> dict[tuple[str, str, str], str]:
    """The candidate a calibration of this model was running when its process died."""
    try:
        data = json.loads(_journal_path(resolved).read_text(encoding="utf-8"))
        if data["key"] == environment_key(resolved):
            return {tuple(data["candidate"]): CRASHED}  # type: ignore[dict-item]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return {}


def _journal_for(resolved: ResolvedModel) -> Callable[[Candidate | None], None]:
    path, key = _journal_path(resolved), environment_key(resolved)

    def note(candidate: Candidate | None) -> None:
        try:  # best effort: a data folder that cannot be written must not stop the run
            if candidate is None:
                path.unlink(missing_ok=True)
            else:
                write_text_atomic(path, json.dumps({"key": key, "candidate": candidate.key}))
        except OSError:
            pass
    return note


# --- running it --------------------------------------------------------------------------------


def calibrate(bag: Any, resolved: ResolvedModel, candidates: Sequence[Candidate] | None = None,
              *, include_all: bool = False, progress: ProgressFn | None = None,
              convert_progress: Callable[[Any], None] | None = None,
              cancel: CancelFlag | None = None, retry_crashed: bool = True
              ) -> Calibration:
    """Measure `candidates` (default: this machine's, `include_all` adding the skipped ones)
    afresh, store the result and return it. `retry_crashed` False rejects, without running
    it, a candidate that took the previous calibration's process down."""
    chosen = list(candidates) if candidates is not None else machine_candidates(include_all)
    t0 = time.monotonic()
    journal = _journal_for(resolved)
    skip = {} if retry_crashed else _crashed(resolved)
    try:
        found = measure(bag, resolved, chosen, progress=progress, journal=journal,
                        convert_progress=convert_progress, cancel=cancel, skip=skip)
    except BaseException:
        journal(None)  # cancelled or failed in an orderly way: not a crash
        raise
    key = {**environment_key(resolved), "candidates": [c.label for c in chosen]}
    result = Calibration(model=resolved.name, key=key, measurements=tuple(found),
                         seconds=time.monotonic() - t0,
                         created=datetime.now(UTC).isoformat(timespec="seconds"))
    try:
        write_text_atomic(cache_path(resolved), json.dumps(result.to_json(), indent=1))
    except OSError:  # still usable now; measured again next time (`path` None says so)
        return result
    return replace(result, path=cache_path(resolved))


def calibration_for(bag: Any, resolved: ResolvedModel,
                    candidates: Sequence[Candidate] | None = None, *,
                    progress: ProgressFn | None = None,
                    convert_progress: Callable[[Any], None] | None = None,
                    cancel: CancelFlag | None = None) -> tuple[Calibration, bool]:
    """(the calibration of `resolved` on this machine, whether it came from the cache):
    the stored one if nothing it depends on changed, else a fresh one (then stored)."""
    chosen = list(candidates) if candidates is not None else machine_candidates()
    found = load_calibration(cache_path(resolved))
    if found is not None and _is_current(found, resolved, chosen):
        return found, True
    return calibrate(bag, resolved, chosen, progress=progress, cancel=cancel,
                     convert_progress=convert_progress, retry_crashed=False), False
