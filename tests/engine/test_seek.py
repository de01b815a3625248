"""Seek-first separation: chunks finish in any order, the stems stay bit for bit the same.

The network is the cheap deterministic stand-in of tests/engine/fakes.py (short segment,
microseconds per chunk; like a batched GEMM its items depend on their batch): the arithmetic
under test is the overlap-add's, the mix's and the scheduler's. Shifts 0, shifts 2 and a bag
of four with two shifts; the reference is one in-order run, itself equal to demucs's whole-song
arithmetic (tests/engine/test_streaming.py).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from engine.chunking import Chunk
from engine.errors import Cancelled
from engine.intervals import Intervals
from engine.job import JobEvent, SeparationJob
from engine.partial import inspect
from engine.separator import Focus, Progress, Separator, _Finisher
from engine.stembuffers import StemBuffers, read_index
from tests.engine.fakes import fake_separator

N = 120_000
CASES = [(1, 0, 1), (1, 2, 1), (4, 2, 1), (1, 0, 2)]  # members, shifts, batch


def _audio(seed: int, n: int = N) -> tuple[np.ndarray, tuple[float, float]]:
    audio = (0.2 * np.random.default_rng(seed).standard_normal((2, n))).astype(np.float32)
    mono = audio.mean(0).astype(np.float64)
    return audio, (float(mono.mean()), float(mono.std(ddof=1)))


def _stems(sink: StemBuffers) -> np.ndarray:
    return np.stack([sink.read(i, 0, sink.frames) for i in range(len(sink.sources))])


def _in_order(sep: Separator, audio: np.ndarray, stats: tuple[float, float], folder: Path,
              offsets: tuple[int, ...] | None) -> np.ndarray:
    sink = StemBuffers(folder, sep.sources, 2, audio.shape[1], 44100)
    sep.separate(audio, *stats, sink, offsets=offsets)
    out = _stems(sink)
    sink.close()
    return out


# --- intervals ----------------------------------------------------------------------------


def test_intervals_join_split_and_answer_where_playback_can_go() -> None:
    final = Intervals().add(100, 200).add(300, 400)
    assert final.spans == ((100, 200), (300, 400)) and final.total == 200
    assert final.prefix == 0 and not final.contains(99) and final.contains(100)
    assert final.end_at(150) == 200 and final.end_at(250) == 250  # inside / in a gap
    assert final.next_start(150) == 300 and final.next_start(300) is None
    assert final.covers(120, 200) and not final.covers(150, 301)
    assert final.gaps(0, 500).spans == ((0, 100), (200, 300), (400, 500))
    joined = final.add(200, 300)  # the gap filled: one span, playback crosses it
    assert joined.spans == ((100, 400),) and joined.end_at(150) == 400
    assert joined.add(0, 100).prefix == 400
    assert final.intersect(Intervals([(150, 350)])).spans == ((150, 200), (300, 350))
    assert final.minus(Intervals([(150, 320)])).spans == ((100, 150), (320, 400))
    assert Intervals([(5, 5), (1, 3), (2, 4)]).spans == ((1, 4),)  # empty dropped, merged


# --- order independence ---------------------------------------------------------------------


@pytest.mark.parametrize("members,shifts,batch", CASES)
def test_any_completion_order_gives_the_in_order_stems_bit_for_bit(
        tmp_path: Path, members: int, shifts: int, batch: int) -> None:
    """Every chunk handed to the post stage in a random order (not even batch by batch)."""
    sep = fake_separator(members, shifts, batch, seed=4)
    audio, stats = _audio(members + shifts)
    offsets = sep.draw_offsets()
    want = _in_order(sep, audio, stats, tmp_path / "in-order", offsets)
    passes = sep.plan(N, offsets)
    scale = (np.float32(stats[0]), np.float32(stats[1] + 1e-8))
    outputs = {}  # the network's raw output per chunk, batched as an in-order run batches
    for p in passes:
        size = sep.batch_size(p.member)
        for k in range(0, len(p.chunks), size):
            batch_chunks = list(p.chunks[k:k + size])
            raw = sep._predict(sep.backends[p.member], batch_chunks, audio, scale)
            for i, c in enumerate(batch_chunks):
                outputs[c] = (raw[0][i:i + 1], raw[1][i:i + 1])
    for order_seed in range(3):
        chunks = list(outputs)
        random.Random(order_seed).shuffle(chunks)
        sink = StemBuffers(tmp_path / f"order{order_seed}", sep.sources, 2, N, 44100)
        finisher = _Finisher(sep, passes, sink, stats, None, len(chunks))
        prefixes = []
        for c in chunks:
            finisher.finish([c], outputs[c])
            prefixes.append(sink.final.prefix)
        assert sink.final.spans == ((0, N),)
        assert np.array_equal(_stems(sink), want), f"order {order_seed}"
        assert all(not a.held for a in finisher.assemblers)  # nothing left behind
        assert all(not pieces for pieces in finisher.combiner.pieces)
        sink.close()


@pytest.mark.parametrize("members,shifts,batch", CASES)
def test_a_listener_jumping_around_changes_the_order_not_the_stems(
        tmp_path: Path, members: int, shifts: int, batch: int) -> None:
    sep = fake_separator(members, shifts, batch, seed=5)
    audio, stats = _audio(10 + members)
    offsets = sep.draw_offsets()
    want = _in_order(sep, audio, stats, tmp_path / "in-order", offsets)
    rng = random.Random(members * 7 + shifts)
    focus = Focus(int(0.6 * N))
    seen: list[Intervals] = []

    def on_progress(p: Progress) -> None:
        seen.append(p.final)
        if rng.random() < 0.3:
            focus.frame = rng.randrange(N)

    sink = StemBuffers(tmp_path / "jumps", sep.sources, 2, N, 44100)
    sep.separate(audio, *stats, sink, offsets=offsets, on_progress=on_progress, focus=focus)
    assert np.array_equal(_stems(sink), want)
    assert any(len(f) > 1 for f in seen)  # islands: chunks did finish out of order
    assert all(a.minus(b).total == 0 for a, b in zip(seen, seen[1:], strict=False))  # grows


# --- seek, jump back, join ---------------------------------------------------------------


def test_a_seek_separates_there_first_goes_on_then_fills_the_start(tmp_path: Path) -> None:
    sep = fake_separator(1, 0)
    audio, stats = _audio(2)
    seek = int(0.6 * N)
    focus = Focus(seek)
    seen: list[Intervals] = []
    sink = StemBuffers(tmp_path / "s", sep.sources, 2, N, 44100)
    sep.separate(audio, *stats, sink, focus=focus, on_progress=lambda p: seen.append(p.final))
    first = next(f for f in seen if f.contains(seek))
    assert seen.index(first) <= 1  # after the chunks that touch it (at most 2)
    [(a, b)] = first.spans
    assert a <= seek < b  # the playhead's region is the first to be playable
    # then forward to the end, and the skipped start last
    reaches_end = next(i for i, f in enumerate(seen) if f.contains(N - 1))
    assert all(not f.contains(0) for f in seen[:reaches_end + 1])
    assert seen[reaches_end].spans[0][0] <= seek
    assert len(seen[-2]) == 2 and seen[-1].spans == ((0, N),)  # the two islands join


def test_jumping_back_into_a_finished_region_costs_nothing(tmp_path: Path) -> None:
    """Back at a final frame the work goes on ahead of the playhead: no chunk is redone and
    the frame is playable at once."""
    sep = fake_separator(1, 2, seed=3)
    audio, stats = _audio(3)
    focus = Focus(int(0.7 * N))
    runs: list[int] = []
    predict = sep.backends[0].predict

    def counting(spec: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        runs.append(len(wave))
        return predict(spec, wave)

    sep.backends[0].predict = counting  # type: ignore[method-assign]
    back: list[bool] = []

    def on_progress(p: Progress) -> None:
        if p.final.contains(int(0.7 * N)) and not back:
            island = next(a for a, b in p.final if a <= int(0.7 * N) < b)
            focus.frame = island + 10  # jump back to the island's start
            back.append(p.final.contains(focus.frame))

    sink = StemBuffers(tmp_path / "s", sep.sources, 2, N, 44100)
    offsets = sep.draw_offsets()
    sep.separate(audio, *stats, sink, focus=focus, on_progress=on_progress, offsets=offsets)
    assert back == [True]
    assert sum(runs) == sum(len(p.chunks) for p in sep.plan(N, offsets))


def test_memory_holds_only_the_edges_of_islands(tmp_path: Path) -> None:
    """In order, a pass keeps only one chunk's overlapping tail; a seek adds the overlap at
    each edge of the island it leaves, never whole chunks."""
    sep = fake_separator(1, 0)
    audio, stats = _audio(4, 400_000)
    overlap = sep.segment - int(0.75 * sep.segment)
    peaks: dict[str, int] = {}
    for name, frame in (("in order", None), ("seek", 250_000)):
        sink = StemBuffers(tmp_path / name, sep.sources, 2, audio.shape[1], 44100)
        seen: list[int] = []
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_Finisher, "finish", _spying_finish(seen))
            sep.separate(audio, *stats, sink, focus=Focus(frame))
        peaks[name] = max(seen)
        sink.close()
    assert peaks["in order"] <= overlap
    assert peaks["seek"] <= 2 * overlap


def _spying_finish(seen: list[int]) -> Callable[..., None]:
    """`_Finisher.finish` that records the samples the assemblers hold after each batch."""
    finish = _Finisher.finish

    def spy(self: _Finisher, chunks: list[Chunk], raw: tuple[np.ndarray, np.ndarray]) -> None:
        finish(self, chunks, raw)
        seen.append(sum(a.held_samples for a in self.assemblers))

    return spy


def _cut(sep: Separator, audio: np.ndarray, stats: tuple[float, float], folder: Path,
         offsets: tuple[int, ...] | None, stop: int, focus: int) -> None:
    """Seek to `focus`, cancel after `stop` chunks, checkpoint."""
    sink = StemBuffers(folder, sep.sources, 2, audio.shape[1], 44100)
    sink.begin({"test": True})
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        sep.separate(audio, *stats, sink, cancel=cancel, offsets=offsets, focus=Focus(focus),
                     on_progress=lambda p: cancel.set() if p.chunks_done >= stop else None)
    sink.checkpoint()
    sink.close()


# --- resume with out-of-order chunks --------------------------------------------------------


@pytest.mark.parametrize("members,shifts,batch", [(1, 0, 1), (1, 2, 1), (2, 1, 3)])
def test_an_out_of_order_run_cut_anywhere_resumes_bit_for_bit(
        tmp_path: Path, members: int, shifts: int, batch: int) -> None:
    sep = fake_separator(members, shifts, batch, seed=6)
    audio, stats = _audio(20 + members, 150_000)
    n = audio.shape[1]
    offsets = sep.draw_offsets()
    want = _in_order(sep, audio, stats, tmp_path / "in-order", offsets)
    total = sum(len(p.chunks) for p in sep.plan(n, offsets))
    skips, islands = [], []
    for stop in range(2, total - 3, max(1, total // 6)):  # (3: a batch)
        folder = tmp_path / f"cut{stop}"
        _cut(sep, audio, stats, folder, offsets, stop, int(0.55 * n))
        recorded = Intervals(map(tuple, read_index(folder)["final"]))  # type: ignore[index]
        resumed = StemBuffers.resume(folder)
        assert resumed.final == recorded
        islands.append(len(recorded))
        for a, b in recorded.gaps(0, n):  # what a killed run may have left outside `final`
            resumed.write(a, np.full((len(sep.sources), 2, b - a), 7.0, np.float32))
        seen: list[Progress] = []
        sep.separate(audio, *stats, resumed, offsets=offsets, on_progress=seen.append,
                     focus=Focus(int(0.1 * n)))  # and the resumed run seeks elsewhere
        skips.append(seen[0].chunks_resumed)
        assert np.array_equal(_stems(resumed), want), f"cut after {stop} of {total} chunks"
        resumed.close()
    assert max(skips) > 0 and max(islands) > 1  # islands were kept, and saved work


def test_the_job_follows_focus_reports_intervals_and_keeps_them_for_a_resume(
        tmp_path: Path) -> None:
    import soundfile as sf

    src = tmp_path / "song.wav"
    audio, _ = _audio(30, 200_000)
    sf.write(src, audio.T, 44100, subtype="FLOAT")
    sep = fake_separator(1, 0)
    events: list[JobEvent] = []
    job: SeparationJob

    def on_event(e: JobEvent) -> None:
        events.append(e)
        if e.kind == "ready" and len([x for x in events if x.kind == "ready"]) == 4:
            job.cancel()

    job = SeparationJob(src, sep, stems_dir=tmp_path / "stems", on_event=on_event)
    job.focus(150_000)
    result = job.run()
    assert result.cancelled
    ready = [Intervals(e.final) for e in events if e.kind == "ready"]
    # the two chunks that touch 150,000 first (it lies in their overlap)
    assert not ready[0].contains(150_000) and ready[1].contains(150_000)
    assert ready[1].prefix == 0
    state = inspect(tmp_path / "stems", job.fingerprint())
    assert state.resumable and state.final == ready[-1]
    assert state.fraction == pytest.approx(state.final.total / 200_000)
    events.clear()
    again = SeparationJob(src, sep, stems_dir=tmp_path / "stems", on_event=events.append)
    assert again.run().ok
    [resumed] = [e for e in events if e.kind == "resumed"]
    assert Intervals(resumed.final) == state.final
    assert again.stems is not None and again.stems.complete
    ref = SeparationJob(src, fake_separator(1, 0), stems_dir=tmp_path / "ref")
    assert ref.run().ok and ref.stems is not None
    assert np.array_equal(_stems(again.stems), _stems(ref.stems))
    again.stems.close()
    ref.stems.close()
