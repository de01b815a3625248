"""Resume: an interrupted separation continues from its last checkpoint, bit for bit.

The separator restarts every pass at its first chunk that reaches past the recorded ready mark
(rounded down to a whole batch) and only rewrites samples from that mark on. These tests cut a
run after every chunk (shifts 0, shifts 2, a bag of four with two shifts, batches of 2), scribble
over everything past the mark as a killed process may leave it, resume, and compare with an
uninterrupted run bit for bit. The network here is a cheap deterministic stand-in with a short
segment (the arithmetic under test is the separator's, not the network's); one test runs the
tiny HTDemucs, and tests/engine/test_cli_resume.py kills real `demixer separate` processes.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from engine.errors import Cancelled
from engine.separator import Progress, Separator
from engine.stembuffers import StemBuffers, read_index
from tests.engine.fakes import fake_separator as _fake_separator


def _stems(sink: StemBuffers) -> np.ndarray:
    return np.stack([sink.read(i, 0, sink.frames) for i in range(len(sink.sources))])


def _interrupted(sep: Separator, audio: np.ndarray, stats: tuple[float, float], folder: Path,
                 offsets: tuple[int, ...] | None, stop_after: int) -> int:
    """Run until `stop_after` chunks are done, then cancel; returns the checkpointed mark."""
    sink = StemBuffers(folder, sep.sources, 2, audio.shape[1], 44100)
    sink.begin({"test": True})
    cancel = threading.Event()

    def on_progress(p: Progress) -> None:
        if p.chunks_done >= stop_after:
            cancel.set()

    with pytest.raises(Cancelled):
        sep.separate(audio, *stats, sink, cancel=cancel, on_progress=on_progress,
                     offsets=offsets)
    sink.checkpoint()
    sink.close()
    return int(read_index(folder)["ready_frames"])  # type: ignore[index]


def _check_resumes(sep: Separator, audio: np.ndarray, tmp_path: Path,
                   stops: list[int] | None = None, every: int = 1) -> list[int]:
    """Cut after each of `stops` chunks (default: every `every`th chunk), resume, compare;
    the numbers of chunks each resume skipped."""
    mono = audio.mean(0).astype(np.float64)
    stats = (float(mono.mean()), float(mono.std(ddof=1)))
    offsets = sep.draw_offsets()
    whole = StemBuffers(tmp_path / "whole", sep.sources, 2, audio.shape[1], 44100)
    dones: list[int] = []
    sep.separate(audio, *stats, whole, offsets=offsets,
                 on_progress=lambda p: dones.append(p.chunks_done))
    want = _stems(whole)
    passes = sep.plan(audio.shape[1], offsets)
    total = sum(len(p.chunks) for p in passes)
    skips = []
    # a cut is a cancel before the last batch (one asked for during it comes too late)
    for stop in stops or range(1, dones[-2] + 1, every):
        folder = tmp_path / f"cut{stop}"
        ready = _interrupted(sep, audio, stats, folder, offsets, stop)
        resumed = StemBuffers.resume(folder)
        assert resumed.ready_frames == ready < audio.shape[1]
        garbage = np.full((len(sep.sources), 2, audio.shape[1] - ready), 7.0, np.float32)
        resumed.write(ready, garbage)  # what a killed run may have left past the mark
        seen: list[Progress] = []
        sep.separate(audio, *stats, resumed, offsets=offsets, on_progress=seen.append)
        assert seen[0].chunks_resumed == sum(sep.resume_chunks(passes, ready))
        skips.append(seen[0].chunks_resumed)
        assert np.array_equal(_stems(resumed), want), f"cut after {stop} of {total} chunks"
        resumed.close()
    return skips


@pytest.mark.parametrize("members,shifts,batch", [(1, 0, 1), (1, 2, 1), (4, 2, 1), (1, 0, 2),
                                                  (2, 1, 3)])
def test_resume_after_any_chunk_is_bit_identical(tmp_path: Path, members: int, shifts: int,
                                                 batch: int) -> None:
    rng = np.random.default_rng(members * 10 + shifts)
    audio = (0.2 * rng.standard_normal((2, 100_000))).astype(np.float32)
    skips = _check_resumes(_fake_separator(members, shifts, batch), audio, tmp_path,
                           every=1 if members * shifts <= 2 else 7)
    assert skips == sorted(skips) and skips[-1] > skips[0]  # later cuts save more work


def test_batches_are_those_of_the_first_run(tmp_path: Path) -> None:
    """Why resume rounds down to a whole batch: our stand-in (like a batched GEMM) gives an
    item slightly different bits in another batch, and the resumed run still matches."""
    sep = _fake_separator(1, 0, batch=2)
    passes = sep.plan(100_000, None)
    ready = passes[0].chunks[2].out_stop + 1  # chunk 3 is the first to reach past it
    assert sep.resume_chunks(passes, ready) == [2]


def test_a_resume_can_be_interrupted_and_resumed_again(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    audio = (0.2 * rng.standard_normal((2, 150_000))).astype(np.float32)
    sep = _fake_separator(2, 2)
    stats = (0.01, 0.2)
    offsets = sep.draw_offsets()
    whole = StemBuffers(tmp_path / "whole", sep.sources, 2, audio.shape[1], 44100)
    sep.separate(audio, *stats, whole, offsets=offsets)
    folder = tmp_path / "cut"
    first = _interrupted(sep, audio, stats, folder, offsets, 5)
    sink = StemBuffers.resume(folder)
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        sep.separate(audio, *stats, sink, cancel=cancel, offsets=offsets,
                     on_progress=lambda p: cancel.set() if p.chunks_done >= 20 else None)
    sink.checkpoint()
    sink.close()
    sink = StemBuffers.resume(folder)
    assert first < sink.ready_frames < audio.shape[1]
    sep.separate(audio, *stats, sink, offsets=offsets)
    assert np.array_equal(_stems(sink), _stems(whole))
