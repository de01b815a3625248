"""Streaming: what a player reads while a song separates is final, and equals a whole-song run.

The whole-song reference below is demucs's `apply_model` written out over full-length numpy
arrays (zeros, += weight * chunk, / sum_weight, mean over shifts, bag weights, de-normalise),
using the same backend for the network, so the streamed stems must equal it bit for bit.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from demucs.pretrained import get_model

from engine.backends import Backend, TorchBackend
from engine.chunking import triangle_weight
from engine.job import JobEvent, SeparationJob
from engine.outputs import OutputPlan
from engine.separator import SeparationOptions, Separator
from engine.stembuffers import StemBuffers
from engine.writers import OutputFormat


def _separator(repo: Path, name: str, **options: object) -> Separator:
    bag = get_model(name, repo=repo)
    return Separator(bag.weights, [TorchBackend(m) for m in bag.models],
                     SeparationOptions(**options))  # type: ignore[arg-type]


def _whole_song(sep: Separator, audio: np.ndarray, mean: float, std: float) -> np.ndarray:
    S, (C, N) = len(sep.sources), audio.shape
    passes = sep.plan(N)
    weight = triangle_weight(sep.segment)
    std32, mean32 = np.float32(std + 1e-8), np.float32(mean)
    per_pass = []
    for p in passes:
        out = np.zeros((S, C, N + 2 * sep.max_shift), np.float32)
        total = np.zeros(N + 2 * sep.max_shift, np.float32)
        o = sep.max_shift  # index of track position 0 in these arrays
        for chunk in p.chunks:
            [y] = sep._run_batch(sep.backends[p.member], [chunk], audio, (mean32, std32))
            a = o + chunk.out_start
            out[..., a:a + chunk.length] += weight[:chunk.length] * y
            total[a:a + chunk.length] += weight[:chunk.length]
        per_pass.append((p.member, out[..., o:o + N] / total[o:o + N]))
    estimate: Any = 0.0  # an array once the first member is added
    for member, w in enumerate(sep.weights.astype(np.float32)):
        acc: Any = 0.0
        for m, x in per_pass:
            if m == member:
                acc = acc + x
        if sep.options.shifts:
            acc = acc / np.float32(sep.options.shifts)
        estimate = estimate + acc * w[:, None, None]
    estimate = estimate / sep.weights.astype(np.float32).sum(0)[:, None, None]
    return estimate * std32 + mean32


# (shifts and bags: their streamed stems are checked against demucs in test_parity and,
# in any completion order, against an in-order run in test_seek)
@pytest.mark.parametrize("name,shifts", [("htdemucs_6s", 0)])
def test_streamed_equals_whole_song_bit_for_bit(tiny_repo: Path, tmp_path: Path, name: str,
                                                shifts: int) -> None:
    rng = np.random.default_rng(3)
    audio = (0.2 * rng.standard_normal((2, 700_000))).astype(np.float32)
    sep = _separator(tiny_repo, name, shifts=shifts, seed=11)
    sink = StemBuffers(tmp_path / "stems", sep.sources, 2, audio.shape[1], 44100)
    snapshots: list[tuple[int, np.ndarray]] = []

    def on_progress(p: object) -> None:  # what a player can read right now
        snapshots.append((sink.ready_frames, np.stack(
            [sink.read(i, 0, sink.ready_frames) for i in range(len(sep.sources))])))

    mono = audio.mean(0).astype(np.float64)
    sep.separate(audio, float(mono.mean()), float(mono.std(ddof=1)), sink,
                 on_progress=on_progress)
    final = np.stack([sink.read(i, 0, audio.shape[1]) for i in range(len(sep.sources))])
    readies = [r for r, _ in snapshots]
    assert readies == sorted(readies) and readies[-1] == audio.shape[1]
    # playable before the end: after one chunk of every pass
    passes = len(sep.plan(audio.shape[1]))
    assert 0 < readies[passes - 1] < audio.shape[1]
    for ready, snap in snapshots:
        assert np.array_equal(snap, final[..., :ready])  # never rewritten later
    want = _whole_song(sep, audio, float(mono.mean()), float(mono.std(ddof=1)))
    assert np.array_equal(final, want)


def test_first_region_is_ready_after_one_chunk(tiny_repo: Path, tmp_path: Path) -> None:
    sep = _separator(tiny_repo, "htdemucs_6s", shifts=0)
    audio = np.zeros((2, 1_000_000), np.float32)
    sink = StemBuffers(tmp_path / "s", sep.sources, 2, audio.shape[1], 44100)
    seen: list[tuple[int, int]] = []
    sep.separate(audio, 0.0, 0.0, sink,
                 on_progress=lambda p: seen.append((p.chunks_done, p.ready_frames)))
    stride = int(0.75 * 343980)
    assert seen[0] == (1, stride)  # the first chunk's region that no later chunk touches
    assert seen[-1] == (len(seen), 1_000_000)


def test_cancel_stops_within_a_chunk_and_leaves_nothing(tiny_repo: Path,
                                                        tmp_path: Path) -> None:
    src = tmp_path / "long.wav"
    sf.write(src, np.zeros((44100 * 60, 2), np.float32), 44100)
    sep = _separator(tiny_repo, "htdemucs_6s", shifts=0)
    out = tmp_path / "out"
    events: list[JobEvent] = []
    job: SeparationJob

    def on_event(e: JobEvent) -> None:
        events.append(e)
        if e.kind == "ready":
            job.cancel()

    job = SeparationJob(src, sep, plan=OutputPlan(root=out, fmt=OutputFormat()),
                        on_event=on_event)
    result = job.run()
    assert result.cancelled and not result.ok and result.written == []
    chunks_after_cancel = [e for e in events[[i for i, e in enumerate(events)
                                              if e.kind == "ready"][0] + 1:]
                           if e.kind == "ready"]
    assert chunks_after_cancel == []  # stopped before the next chunk
    assert events[-1].kind == "cancelled"
    assert not out.exists()
    assert job.workdir is not None and job.stems_dir is not None
    assert not job.workdir.exists() and not job.stems_dir.exists()  # temporary stems: gone


def test_cancel_during_writing_removes_the_stems_already_written(tiny_repo: Path,
                                                                 tmp_path: Path) -> None:
    src = tmp_path / "song.wav"
    sf.write(src, np.zeros((44100 * 3, 2), np.float32), 44100)
    sep = _separator(tiny_repo, "htdemucs_6s", shifts=0)
    out = tmp_path / "out"
    job: SeparationJob
    flag = threading.Event()

    def on_event(e: JobEvent) -> None:
        if e.kind == "stage" and e.stage == "writing":
            flag.set()
            job.cancel()

    job = SeparationJob(src, sep, plan=OutputPlan(root=out), on_event=on_event)
    result = job.run()
    assert flag.is_set() and result.cancelled
    assert not any(p.is_file() for p in out.rglob("*")) if out.exists() else True


@pytest.mark.parametrize("shifts", [0])
def test_first_region_is_finished_before_the_next_network_call(tiny_repo: Path,
                                                               tmp_path: Path,
                                                               shifts: int) -> None:
    """Latency first: the listener waits for the first region, so nothing competes with it."""
    sep = _separator(tiny_repo, "htdemucs_6s", shifts=shifts, seed=1)
    order: list[str] = []
    backend = sep.backends[0]
    predict = backend.predict

    def recording_predict(spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order.append("predict")
        return predict(spec, wave)

    backend.predict = recording_predict  # type: ignore[method-assign]
    audio = np.zeros((2, 1_000_000), np.float32)
    sink = StemBuffers(tmp_path / "s", sep.sources, 2, audio.shape[1], 44100)
    sep.separate(audio, 0.0, 0.0, sink,
                 on_progress=lambda p: order.append("ready" if p.ready_frames else "pending"))
    passes = len(sep.plan(audio.shape[1]))  # every pass's first chunk is needed
    first_ready = order.index("ready")
    assert order[:first_ready].count("predict") == passes
    assert order[first_ready + 1] == "predict"


class _OffHost:
    """The same network, declared to compute off the CPU (as CoreML on the ANE does)."""

    host_bound = False

    def __init__(self, inner: Backend) -> None:
        self.inner, self.name = inner, "off-host"
        self.shapes, self.max_batch = inner.shapes, inner.max_batch

    def predict(self, spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.predict(spec, wave)


def test_post_stage_overlaps_only_a_network_that_leaves_the_cpu_free(tiny_repo: Path,
                                                                     tmp_path: Path) -> None:
    """On the CPU the post stage takes turns with torch; beside the ANE it runs alongside."""
    rng = np.random.default_rng(5)
    audio = (0.2 * rng.standard_normal((2, 900_000))).astype(np.float32)
    stems, threads = [], []
    for off_host in (False, True):
        sep = _separator(tiny_repo, "htdemucs_6s", shifts=0)
        if off_host:
            sep.backends = [_OffHost(b) for b in sep.backends]
        sink = StemBuffers(tmp_path / f"s{off_host}", sep.sources, 2, audio.shape[1], 44100)
        names: list[str] = []
        sep.separate(audio, 0.0, 1.0, sink,
                     on_progress=lambda p, names=names: names.append(  # type: ignore[misc]
                         threading.current_thread().name))
        threads.append(names)
        stems.append(np.stack([sink.read(i, 0, audio.shape[1]) for i in range(6)]))
    here = threading.current_thread().name
    assert len(threads[0]) >= 4 and set(threads[0]) == {here}
    assert threads[1][0] == here  # the first region: latency first, on this thread
    assert all(n.startswith("demixer-post") for n in threads[1][1:])
    assert np.array_equal(stems[0], stems[1])
