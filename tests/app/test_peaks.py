"""Waveform peaks: every zoom level agrees with a brute-force min/max, built in any steps."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from app.peaks import BASE_FRAMES, PeakBuilder, Peaks, load_all, save_all
from tests.app.helpers import growing_track, stems_audio


def brute(audio: np.ndarray, start: float, fpp: float, width: int, size: int):  # type: ignore[no-untyped-def]
    """Min/max per pixel x over the bins of `size` frames from the one its left edge is in
    up to the one pixel x + 1 starts in (at least one bin)."""
    lo, hi = [], []
    frames = audio.shape[0]
    for x in range(width):
        first = int((start + x * fpp) // size)
        if first * size >= frames:
            break
        last = max(first + 1, int((start + (x + 1) * fpp) // size))
        block = audio[first * size:min(last * size, frames)]
        lo.append(block.min())
        hi.append(block.max())
    return np.array(lo), np.array(hi)


@pytest.mark.parametrize("steps", [[100_003], [BASE_FRAMES * 7, BASE_FRAMES * 900, 100_003]])
@pytest.mark.parametrize("fpp,size", [(64.0, 64), (300.0, 256), (5000.0, 4096), (70000.0, 65536)])
def test_columns_match_brute_force(steps: list[int], fpp: float, size: int) -> None:
    rng = np.random.default_rng(3)
    audio = rng.uniform(-1, 1, (100_003, 2)).astype(np.float32)
    peaks = Peaks(len(audio))
    done = 0
    for stop in np.cumsum(steps):
        stop = min(stop, len(audio))
        peaks.append(audio[done:stop])
        done = stop
    assert peaks.complete
    for start in (0.0, 12345.0):
        lo, hi = peaks.columns(start, fpp, 200)
        want_lo, want_hi = brute(audio, start, fpp, 200, size)
        np.testing.assert_array_equal(lo, want_lo)
        np.testing.assert_array_equal(hi, want_hi)


def test_columns_stop_at_the_ready_region() -> None:
    peaks = Peaks(10_000)
    peaks.append(np.ones((BASE_FRAMES * 10, 2), np.float32))
    lo, hi = peaks.columns(0, 64.0, 100)
    assert len(lo) == 10 and np.all(hi == 1)


def test_builder_follows_the_ready_mark_and_saves(tmp_path: Path) -> None:
    stems = stems_audio(50_000)
    track, progress = growing_track(tmp_path, stems, ready=20_000)
    saved: list[list[Peaks]] = []
    builder = PeakBuilder(track, on_complete=saved.append)
    builder.start()
    deadline = time.monotonic() + 10
    while builder.peaks[0].valid_frames < 20_000 - BASE_FRAMES and time.monotonic() < deadline:
        time.sleep(0.01)
    assert builder.peaks[0].valid_frames <= 20_000  # never beyond the ready mark
    assert builder.peaks[-1].valid_frames == 50_000 or not saved  # the original is all there
    progress.ready_frames = 50_000
    while not saved and time.monotonic() < deadline:
        time.sleep(0.01)
    builder.stop()
    assert saved and all(p.complete for p in saved[0])
    lo, hi = saved[0][1].columns(0, 1024.0, 50)
    bass = stems["bass"].T
    assert hi[0] == pytest.approx(bass[:1024].max()) and lo[0] == pytest.approx(bass[:1024].min())
    save_all(saved[0], tmp_path / "peaks.npz")
    again = load_all(tmp_path / "peaks.npz", len(track.lanes), track.frames)
    assert again is not None
    np.testing.assert_array_equal(again[2].levels[3], saved[0][2].levels[3])
    assert load_all(tmp_path / "peaks.npz", 3, track.frames) is None  # another song's
    track.close()
