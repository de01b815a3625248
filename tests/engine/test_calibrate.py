"""Calibration (engine.calibrate): gates, reasons, the cache, the crash journal, and the
run-time hand-over (engine.fallback), on the tiny model.

Fake candidates wrap one real torch fp32 backend whose outputs are memoised per input, so
most of them cost nothing to run: `exact` returns the memoised output (fast, equal to the
reference), the others damage it (noise, NaN, a wrong shape), sleep, or raise.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

import engine.calibrate as calibrate_mod
from engine.backends import Backend, TorchBackend
from engine.calibrate import (
    CRASHED,
    GATES,
    Calibration,
    cache_path,
    calibrate,
    calibration_for,
    load_calibration,
)
from engine.candidates import Candidate, machine_candidates
from engine.excerpt import excerpt
from engine.fallback import Handover, fallback_backends
from engine.job import JobEvent, SeparationJob
from engine.separator import SeparationOptions, Separator
from engine.store import ResolvedModel, load_model, resolve_model
from tests.engine.audio_files import write_wav


@pytest.fixture(scope="module")
def model(tiny_repo: Path) -> tuple[Any, ResolvedModel]:
    resolved = resolve_model("htdemucs_6s", tiny_repo)
    return load_model(resolved), resolved


class Memo:
    """A real torch fp32 backend whose outputs are remembered per input."""

    def __init__(self, bag: Any) -> None:
        self.real = TorchBackend(bag.models[0])
        self.outputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = hashlib.sha256(spec.tobytes() + wave.tobytes()).hexdigest()
        if key not in self.outputs:
            self.outputs[key] = self.real.predict(spec, wave)
        spec_out, time_out = self.outputs[key]
        return spec_out.copy(), time_out.copy()


@pytest.fixture(scope="module")
def memo(model: tuple[Any, ResolvedModel]) -> Memo:
    return Memo(model[0])


class Fake:
    """A backend that runs `behaviour(spec, wave)`; counts its calls."""

    def __init__(self, shapes: Any, behaviour: Callable[..., tuple[np.ndarray, np.ndarray]],
                 host_bound: bool = True) -> None:
        self.name, self.shapes, self.max_batch = "fake", shapes, 1
        self.behaviour, self.calls, self._host_bound = behaviour, 0, host_bound

    @property
    def host_bound(self) -> bool:
        return self._host_bound

    def predict(self, spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        return self.behaviour(spec, wave)


def fake_candidate(name: str, behaviour: Callable[..., tuple[np.ndarray, np.ndarray]],
                   built: list[str] | None = None, precision: str = "x") -> Candidate:
    def build(bag: Any, resolved: Any, progress: Any, cancel: Any) -> list[Backend]:
        if built is not None:
            built.append(name)
        shapes = TorchBackend(bag.models[0]).shapes
        return [Fake(shapes, behaviour)]
    return Candidate(name, precision, "cpu", build)


def noisy(memo: Memo, snr_db: float) -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)

    def run(spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s, t = memo(spec, wave)
        scale = 10 ** (-snr_db / 20)
        return (s + scale * s.std() * rng.standard_normal(s.shape).astype(np.float32),
                t + scale * t.std() * rng.standard_normal(t.shape).astype(np.float32))
    return run


def reference(memo: Memo, built: list[str] | None = None) -> Candidate:
    """torch fp32 cpu, as the calibration's reference (memoised: cheap after one call)."""
    return fake_candidate("torch", memo, built, precision="fp32")


def test_the_excerpt_is_fixed_music_like_and_at_a_real_level() -> None:
    x = excerpt(44100, 343980)
    assert x.shape == (2, 343980) and x.dtype == np.float32
    assert np.array_equal(x, excerpt(44100, 343980))  # deterministic
    assert abs(float(np.abs(x).max()) - 0.89) < 1e-6  # -1 dBFS peak
    rms_db = 20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    assert -24 < rms_db < -12, rms_db  # mastered-music loudness, not a test tone
    spectrum = np.abs(np.fft.rfft(x[0])) ** 2
    freqs = np.fft.rfftfreq(x.shape[1], 1 / 44100)
    bands = [spectrum[(freqs >= lo) & (freqs < hi)].sum() for lo, hi in
             [(20, 150), (150, 2000), (2000, 8000), (8000, 20000)]]
    assert min(bands) > 1e-5 * max(bands), bands  # bass, mids and highs all present
    frame = x[0, :44100 * 7].reshape(-1, 441)  # 10 ms frames: drum hits stand out
    energy = (frame.astype(np.float64) ** 2).mean(axis=1)
    assert energy.max() > 20 * np.median(energy)
    assert not np.array_equal(x[0], x[1])  # a stereo picture, not dual mono


def test_wrong_slow_raising_nan_and_misshapen_candidates_lose_for_their_reason(
        model: tuple[Any, ResolvedModel], memo: Memo) -> None:
    bag, resolved = model

    def slow(spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        time.sleep(1.0)
        return memo(spec, wave)

    def raises(spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise RuntimeError("Metal device lost")

    def nan(spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s, t = memo(spec, wave)
        s[0, 0, 0, 5, 5] = np.nan
        return s, t

    def misshapen(spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s, t = memo(spec, wave)
        return s[:, :4], t[:, :4]

    def real(spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        time.sleep(0.5)  # the reference computes (and waits): "fast" wins at any machine load
        return memo.real.predict(spec, wave)

    candidates = [fake_candidate("torch", real, precision="fp32"), fake_candidate("fast", memo),
                  fake_candidate("wrong", noisy(memo, 30.0)),
                  fake_candidate("fifty", noisy(memo, 55.0)),
                  fake_candidate("slow", slow), fake_candidate("raises", raises),
                  fake_candidate("nan", nan), fake_candidate("misshapen", misshapen)]
    result = calibrate(bag, resolved, candidates)
    by = {m.backend: m for m in result.measurements}
    assert by["torch"].snr_db == float("inf") and by["fast"].snr_db > 120  # type: ignore
    assert 15 < by["wrong"].snr_db < 35 and 42 < by["fifty"].snr_db < 58  # type: ignore
    assert by["raises"].error == "RuntimeError: Metal device lost"
    assert by["nan"].error == "returned non-finite values (NaN or infinity)"
    assert by["misshapen"].error is not None and \
        by["misshapen"].error.startswith("returned spec_out of shape (1, 4, ")
    assert by["slow"].seconds > by["fast"].seconds + 0.5  # type: ignore[operator]
    for quality in GATES:
        rows = {r.backend: r for r in result.table(quality)}
        assert result.chosen(quality).backend == "fast" and rows["fast"].chosen
        assert rows["fast"].reason.startswith(f"chosen: the fastest that passes the {quality}")
        assert rows["slow"].passed and not rows["slow"].chosen
        assert rows["slow"].reason.startswith("passed; ") and \
            rows["slow"].reason.endswith("x slower than fast x cpu")
        assert not rows["wrong"].passed
        assert rows["wrong"].reason == (f"worst stem {by['wrong'].snr_db:.1f} dB is below "
                                        f"the {quality} gate ({GATES[quality]:.0f} dB)")
        assert rows["raises"].reason == "RuntimeError: Metal device lost"
        assert not rows["nan"].passed and not rows["misshapen"].passed
    fifty = {q: next(r for r in result.table(q) if r.backend == "fifty") for q in GATES}
    assert fifty["fast"].passed and not fifty["default"].passed and not fifty["exact"].passed


def test_the_reference_must_run(model: tuple[Any, ResolvedModel], memo: Memo) -> None:
    from engine.errors import DemixerError

    def broken(spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise MemoryError()

    with pytest.raises(DemixerError, match=r"reference backend \(torch fp32 cpu\) cannot run "
                                           r"htdemucs_6s on this machine \(MemoryError\)"):
        calibrate(*model, [fake_candidate("torch", broken, precision="fp32")])


def test_the_cache_is_hit_then_invalidated_by_a_library_version(
        model: tuple[Any, ResolvedModel], memo: Memo, monkeypatch: pytest.MonkeyPatch) -> None:
    bag, resolved = model
    built: list[str] = []
    candidates = [reference(memo, built), fake_candidate("fast", memo, built)]
    first, hit = calibration_for(bag, resolved, candidates)
    assert not hit and built == ["torch", "fast"]
    stored = json.loads(cache_path(resolved).read_text())
    assert stored["key"]["checkpoints"] == list(resolved.sha256)
    assert stored["key"]["candidates"] == ["torch fp32 cpu", "fast x cpu"]
    assert "torch" in stored["key"]["libraries"] and stored["key"]["machine"]
    second, hit = calibration_for(bag, resolved, candidates)
    assert hit and built == ["torch", "fast"]  # no candidate ran again
    assert second == first and load_calibration(cache_path(resolved)) == first

    real_versions = calibrate_mod.library_versions
    monkeypatch.setattr(calibrate_mod, "library_versions",
                        lambda: {**real_versions(), "torch": "99.0"})
    third, hit = calibration_for(bag, resolved, candidates)
    assert not hit and built == ["torch", "fast"] * 2
    assert third.key["libraries"]["torch"] == "99.0"
    more = [*candidates, fake_candidate("new", memo, built)]  # a backend appeared
    assert not calibration_for(bag, resolved, more)[1]


def test_a_candidate_that_crashed_the_process_is_skipped_until_asked_for(
        model: tuple[Any, ResolvedModel], memo: Memo) -> None:
    bag, resolved = model
    built: list[str] = []
    crashy = fake_candidate("crashy", memo, built)
    candidates = [reference(memo, built), crashy]
    calibrate_mod._journal_for(resolved)(crashy)  # as if the process died while it ran
    result, hit = calibration_for(bag, resolved, candidates)
    assert not hit and built == ["torch"]
    assert result.measurements[1].error == CRASHED
    assert not cache_path(resolved).with_suffix(".running").exists()
    fresh = calibrate(bag, resolved, candidates)  # `demixer models calibrate`: tries it again
    assert built == ["torch", "torch", "crashy"] and fresh.measurements[1].error is None


def test_with_all_mlx_fp32_is_measured_and_exact_never_takes_bf16(
        model: tuple[Any, ResolvedModel]) -> None:
    """`--all`'s extra candidates here: MLX's CPU build (skipped by the automatic run)."""
    every = {c.label: c for c in machine_candidates(include_all=True)}
    mlx = [label for label in every if label.startswith("mlx ")]  # tests/run.sh: mlx[cpu]
    assert all(not every[label].auto for label in mlx) and "mlx fp32 cpu" in mlx
    assert not {c.label for c in machine_candidates()} & set(mlx)  # not in the automatic run
    chosen = [every[label] for label in ("torch fp32 cpu", "torch bf16 cpu", "mlx fp32 cpu")]
    result = calibrate(*model, chosen)
    by = {m.label: m for m in result.measurements}
    assert by["mlx fp32 cpu"].error is None
    assert by["mlx fp32 cpu"].snr_db >= GATES["exact"]  # type: ignore[operator]
    assert by["torch bf16 cpu"].snr_db < GATES["exact"]  # type: ignore[operator]
    assert result.chosen("exact").label in ("torch fp32 cpu", "mlx fp32 cpu")


# --- the hand-over ---------------------------------------------------------------------------


def flaky(label: tuple[str, str], real: Callable[[Any], Backend], fail_at: int) -> Candidate:
    """A candidate whose every backend raises on its `fail_at`-th call."""
    def build(bag: Any, resolved: Any, progress: Any, cancel: Any) -> list[Backend]:
        inner = real(bag)
        calls = [0]

        def run(spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            calls[0] += 1
            if calls[0] == fail_at:
                raise RuntimeError("MPSGraph execution failed")
            return inner.predict(spec, wave)
        return [Fake(inner.shapes, run)]
    return Candidate(label[0], label[1], "cpu", build)


def _song(path: Path, seconds: float) -> Path:
    audio = np.tile(excerpt(44100, 343980), (1, 3))[:, :int(seconds * 44100)]
    return write_wav(path, audio, 44100)


def _separate(sep: Separator, song: Path, events: list[JobEvent]) -> dict[str, np.ndarray]:
    """The stems of `song` (a job as the app runs it, stems kept beside the song)."""
    folder = song.parent / f"stems-{len(list(song.parent.glob('stems-*')))}"
    job = SeparationJob(song, sep, stems_dir=folder, on_event=events.append)
    job.start()
    assert job.wait().ok, job.result.error
    assert job.stems is not None
    stems = {s: job.stems.read(s, 0, job.stems.frames).copy() for s in job.stems.sources}
    job.stems.close()
    return stems


def test_a_backend_failing_mid_song_hands_over_and_the_stems_still_pass(
        model: tuple[Any, ResolvedModel], tmp_path: Path) -> None:
    bag, resolved = model
    song = _song(tmp_path / "song.wav", 14.0)  # three chunks
    options = SeparationOptions(shifts=0)
    fp32 = Candidate("torch", "fp32", "cpu", lambda b, r, p, c: [TorchBackend(b.models[0])])
    want = _separate(Separator(bag.weights, fp32.build(bag, resolved, None, None), options),
                     song, [])
    bf16 = flaky(("torch", "bf16"), lambda b: TorchBackend(b.models[0], precision="bf16"), 2)
    backends = fallback_backends([bf16, fp32], bag, resolved)
    events: list[JobEvent] = []
    got = _separate(Separator(bag.weights, backends, options), song, events)
    notices = [e.message for e in events if e.kind == "notice"]
    assert notices == ["The torch bf16 cpu backend failed (RuntimeError: MPSGraph execution "
                       "failed); continuing with torch fp32 cpu from the same chunk."]
    assert backends[0].candidate.label == "torch fp32 cpu"
    for stem, ref in want.items():
        err = float(((got[stem] - ref) ** 2).sum())
        snr = 10 * np.log10(float((ref ** 2).sum()) / max(err, 1e-30))
        assert snr >= GATES["fast"], (stem, snr)  # bf16's gate: the chunks before are bf16
        assert np.isfinite(got[stem]).all()
    assert any(not np.array_equal(got[s], want[s]) for s in want)  # chunk 1 really was bf16
    again: list[JobEvent] = []
    _separate(Separator(bag.weights, backends, options), song, again)  # says it once only
    assert not [e for e in again if e.kind == "notice"]


def test_hand_over_skips_candidates_that_cannot_load_and_ends_in_one_sentence(
        model: tuple[Any, ResolvedModel], memo: Memo) -> None:
    from engine.errors import DemixerError

    bag, resolved = model

    def cannot_load(b: Any, r: Any, p: Any, c: Any) -> list[Backend]:
        raise OSError("the package is damaged")

    def always_fails(spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise RuntimeError("out of GPU memory")

    broken = Candidate("coreml", "mixed", "all", cannot_load)
    last = fake_candidate("torch", always_fails, precision="fp32")
    handover = Handover([broken, last], lambda c: c.build(bag, resolved, None, None))
    told: list[str] = []
    handover.set_notice_handler(told.append)  # a load-time hand-over waits for a handler
    assert told == ["The coreml mixed all backend failed (OSError: the package is damaged); "
                    "continuing with torch fp32 cpu."]
    [backend] = fallback_backends([last], bag, resolved)
    spec = np.zeros((1, *backend.shapes.spec_shape), np.float32)
    wave = np.zeros((1, *backend.shapes.wave_shape), np.float32)
    with pytest.raises(DemixerError, match=r"^The torch fp32 cpu backend failed \(RuntimeError: "
                                           r"out of GPU memory\) and no other backend"):
        backend.predict(spec, wave)


def test_calibration_is_cancelled_between_calls(model: tuple[Any, ResolvedModel],
                                                memo: Memo) -> None:
    import threading

    from engine.errors import Cancelled

    cancel = threading.Event()
    seen: list[str] = []

    def stop_after_two(p: Any) -> None:
        seen.append(p.message)
        if len(seen) == 2:
            cancel.set()

    with pytest.raises(Cancelled):
        calibrate(*model, [reference(memo), fake_candidate("fast", memo)],
                  progress=stop_after_two, cancel=cancel)
    assert seen == ["preparing", "warmed up"]
    assert not cache_path(model[1]).exists()  # nothing half-measured is stored
    assert not cache_path(model[1]).with_suffix(".running").exists()


def test_a_calibration_that_cannot_be_stored_is_still_used(model: tuple[Any, ResolvedModel],
                                                            memo: Memo,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    def disk_full(path: Path, text: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(calibrate_mod, "write_text_atomic", disk_full)
    result = calibrate(*model, [reference(memo), fake_candidate("fast", memo)])
    assert result.path is None and [m.error for m in result.measurements] == [None, None]
    assert not cache_path(model[1]).exists()


def test_calibration_json_round_trips() -> None:
    from engine.calibrate import Measurement

    c = Calibration("m", {"a": 1}, (Measurement("torch", "fp32", "cpu", 1.0, float("inf")),
                                    Measurement("x", "y", "z", error="E: e")), 2.0, "now")
    assert Calibration.from_json(json.loads(json.dumps(c.to_json()))) == c


# --- the candidate registry -------------------------------------------------------------------


def _fake_module(monkeypatch: pytest.MonkeyPatch, name: str, **attrs: Any) -> None:
    """`engine.<name>` as if that backend's module were part of this build."""
    import importlib.machinery
    import sys
    import types

    module = types.ModuleType(f"engine.{name}")
    module.__spec__ = importlib.machinery.ModuleSpec(f"engine.{name}", None)
    for key, value in attrs.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, f"engine.{name}", module)


def test_backends_in_their_own_modules_join_when_present(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from engine.candidates import backend_kinds, machine_candidates

    for name in ("mlx_backend", "openvino_backend", "onnxruntime_backend"):
        monkeypatch.setitem(sys.modules, f"engine.{name}", None)  # as if absent
    kinds = {k.kind: k for k in backend_kinds()}
    for kind in ("mlx", "openvino", "onnxruntime"):
        assert kinds[kind].candidates == () and "is not part of this build" in \
            kinds[kind].unavailable
    calls: list[tuple[Any, dict[str, Any]]] = []

    def factory(bag: Any, resolved: Any, **kwargs: Any) -> list[str]:
        calls.append((bag, kwargs))
        return ["backend"]

    _fake_module(monkeypatch, "mlx_backend", mlx_available=lambda: True,
                 PRECISIONS=("fp32", "bf16"), mlx_backends_for=factory)
    _fake_module(monkeypatch, "openvino_backend", openvino_available=lambda: True,
                 supported_precisions=lambda: ("fp32",), openvino_backends_for=factory)
    _fake_module(monkeypatch, "onnxruntime_backend", onnxruntime_available=lambda: False)
    auto = [c.label for c in machine_candidates()]
    every = [c.label for c in machine_candidates(include_all=True)]
    assert auto == ["torch fp32 cpu", "torch bf16 cpu", "openvino fp32 cpu"]  # no Metal here
    assert every == auto[:2] + ["mlx fp32 cpu", "mlx bf16 cpu", "openvino fp32 cpu"]
    assert {k.kind: k.unavailable for k in backend_kinds()}["onnxruntime"] == \
        "onnxruntime is not installed"
    mlx_bf16 = machine_candidates(include_all=True)[3]
    assert mlx_bf16.build("bag", cast(Any, "resolved"), None, None) == ["backend"]
    openvino = machine_candidates()[2]
    openvino.build("bag", cast(Any, "resolved"), None, None)
    import torch

    assert calls == [("bag", {"precision": "bf16", "progress": None, "cancel": None}),
                     (None, {"precision": "fp32", "progress": None, "cancel": None,
                             "threads": torch.get_num_threads()})]
