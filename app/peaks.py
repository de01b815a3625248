"""Waveform peaks: min/max of a lane at several resolutions, built incrementally. Qt-free.

Level k holds one (min, max) pair per `BASE_FRAMES * FACTOR**k` frames of the lane's mono
envelope (min and max over both channels), float32, shape (2, bins). Level 0 is 64 frames a
bin (1.5 ms at 44.1 kHz), the top level 65,536 frames; drawing any zoom reduces at most
~4 bins per pixel, so a 10-minute song redraws in well under a millisecond per lane.

A seek-first separation finishes the stems out of order, so the peaks are built wherever
the stems are final (`TrackAudio.final`), whole bins at a time; `Peaks.valid` is the set of
frames built (`valid_frames` its prefix), and columns with nothing built come out as NaN
(drawn as nothing).

NB: threads. One builder thread adds; it fills bins outside `valid`, then publishes a new
`valid` (an immutable `Intervals`, one reference store). Readers use only bins inside it.
`PeakBuilder.stop` is deterministic: it takes the lock the builder holds around each step, so
once it returns no read of the track runs or can start and the track may be closed. The
threads: docs/architecture.md.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from app.track import TrackAudio
from engine.atomicio import write_atomic
from engine.intervals import Intervals

BASE_FRAMES = 64
FACTOR = 4
LEVELS = 6
BUILD_BLOCK = 1 << 16  # frames read per step; a multiple of BASE_FRAMES


def bin_frames(level: int) -> int:
    return BASE_FRAMES * FACTOR**level


class Peaks:
    """The min/max pyramid of one lane of `frames` frames."""

    def __init__(self, frames: int) -> None:
        self.frames = frames
        self.levels = [np.zeros((2, -(-frames // bin_frames(k))), np.float32)
                       for k in range(LEVELS)]
        self.valid = Intervals()

    @property
    def valid_frames(self) -> int:
        """How far the peaks are built from the start without a gap."""
        return self.valid.prefix

    @valid_frames.setter
    def valid_frames(self, frames: int) -> None:
        self.valid = Intervals.upto(frames)

    @property
    def complete(self) -> bool:
        return self.valid.covers(0, self.frames)

    def append(self, block: np.ndarray) -> None:
        """Add (n, C) float32 frames at `valid_frames` (see `add`)."""
        self.add(self.valid_frames, block)

    def add(self, start: int, block: np.ndarray) -> None:
        """Add (n, C) float32 frames at `start`, a multiple of BASE_FRAMES; n is one too
        unless the block ends the lane."""
        n = min(block.shape[0], self.frames - start)
        if n <= 0:
            return
        first, full = start // BASE_FRAMES, n // BASE_FRAMES
        base = self.levels[0]
        if full:
            grid = block[: full * BASE_FRAMES].reshape(full, -1)
            base[0, first:first + full] = grid.min(axis=1)
            base[1, first:first + full] = grid.max(axis=1)
        if n % BASE_FRAMES:
            tail = block[full * BASE_FRAMES:n]
            base[:, first + full] = tail.min(), tail.max()
        self._build_upper(first, first + -(-n // BASE_FRAMES))
        self.valid = self.valid.add(start, start + n)  # NB: published after the bins

    def _build_upper(self, lo: int, hi: int) -> None:
        """Recompute the bins of levels 1.. that cover level-0 bins [lo, hi)."""
        for k in range(1, LEVELS):
            lower, upper = self.levels[k - 1], self.levels[k]
            lo, hi = lo // FACTOR, -(-hi // FACTOR)
            seg = lower[:, lo * FACTOR:min(hi * FACTOR, lower.shape[1])]
            if seg.shape[1] == 0:
                return
            starts = np.arange(0, seg.shape[1], FACTOR)
            upper[0, lo:lo + len(starts)] = np.minimum.reduceat(seg[0], starts)
            upper[1, lo:lo + len(starts)] = np.maximum.reduceat(seg[1], starts)

    def columns(self, start: float, frames_per_px: float,
                width: int) -> tuple[np.ndarray, np.ndarray]:
        """(mins, maxs) for pixel columns 0.. of a view starting at frame `start`, up to the
        last column with built data (possibly 0 columns); a column with nothing built is
        NaN. Column x reduces the bins from the one its left edge falls in up to (not
        including) the one column x + 1 starts in."""
        level = 0
        while level + 1 < LEVELS and bin_frames(level + 1) <= frames_per_px:
            level += 1
        size = bin_frames(level)
        valid = self.valid
        valid_bins = -(-valid.spans[-1][1] // size) if valid else 0
        edges = start + np.arange(width + 1) * frames_per_px
        first = np.floor(edges[:-1] / size).astype(np.int64)
        count = int(np.searchsorted(first, valid_bins))  # columns that start in valid data
        if count == 0 or first[0] < 0:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        end = int(min(valid_bins, max(first[count - 1] + 1, edges[count] // size)))
        table = self.levels[level][:, :end]
        lo = np.minimum.reduceat(table[0], first[:count])
        hi = np.maximum.reduceat(table[1], first[:count])
        if len(valid) > 1 or valid.spans[0][0] > 0:
            self._blank_unbuilt(lo, hi, first[:count] * size, edges[1:count + 1], size)
        return lo, hi

    def _blank_unbuilt(self, lo: np.ndarray, hi: np.ndarray, col_start: np.ndarray,
                       col_edge: np.ndarray, size: int) -> None:
        """NaN in the columns whose frames hold nothing built (between islands)."""
        col_end = np.maximum(col_start + size, np.floor(col_edge / size) * size)
        built = np.zeros(len(lo), bool)
        for a, b in self.valid:
            built |= (col_start < b) & (col_end > a)
        lo[~built] = np.nan
        hi[~built] = np.nan

    @classmethod
    def _from(cls, data: np.lib.npyio.NpzFile, prefix: str) -> Peaks:
        peaks = cls(int(data[prefix + "frames"]))
        peaks.levels = [np.array(data[f"{prefix}level{k}"], np.float32) for k in range(LEVELS)]
        peaks.valid_frames = int(data[prefix + "valid"])
        return peaks


def save_all(peaks: list[Peaks], path: Path) -> None:
    """Save the peaks of every lane of a song in one .npz (written atomically)."""
    arrays: dict[str, np.ndarray] = {}
    for i, p in enumerate(peaks):
        arrays[f"{i}_frames"] = np.array(p.frames)
        arrays[f"{i}_valid"] = np.array(p.valid_frames)
        arrays.update({f"{i}_level{k}": a for k, a in enumerate(p.levels)})
    arrays["lanes"] = np.array(len(peaks))
    # numpy's stub fears 'allow_pickle' among the arrays' names
    write_atomic(path, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]


def load_all(path: Path, lanes: int, frames: int) -> list[Peaks] | None:
    """Peaks saved by `save_all`, or None if absent, unreadable or not for this song."""
    try:
        with np.load(path) as data:
            if int(data["lanes"]) != lanes:
                return None
            found = [Peaks._from(data, f"{i}_") for i in range(lanes)]
    except (OSError, KeyError, ValueError):
        return None
    return found if all(p.frames == frames for p in found) else None


class PeakBuilder:
    """Builds the peaks of every lane of `track` on a daemon thread, following its ready mark.

    `on_complete(peaks)` runs on that thread once every lane is complete (the app saves them
    next to the stems, so reopening from the library needs no pass over the audio).
    """

    def __init__(self, track: TrackAudio, peaks: list[Peaks] | None = None,
                 on_complete: Callable[[list[Peaks]], None] | None = None) -> None:
        self.track = track
        self.peaks = peaks or [Peaks(track.frames) for _ in track.lanes]
        self.on_complete = on_complete
        self._stop = threading.Event()
        self._lock = threading.Lock()  # NB: held around each step; `stop` takes it
        self._block = np.zeros((BUILD_BLOCK, track.channels), np.float32)
        self._scratch = np.zeros_like(self._block)
        self._thread: threading.Thread | None = None

    @property
    def complete(self) -> bool:
        return all(p.complete for p in self.peaks)

    def start(self) -> None:
        if self.complete:
            return
        self._thread = threading.Thread(target=self._run, name="demixer-peaks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop building; on return the builder reads the track no more (see module NB)."""
        self._stop.set()
        if self._thread is None or self._thread is threading.current_thread():
            return
        with self._lock:  # a step in progress ends first; the next sees `_stop` and quits
            pass
        self._thread.join(2.0)  # only the pause or the saving of finished peaks remains

    def step(self) -> bool:
        """Add one block to each lane that has new final audio; whether any was added."""
        worked = False
        for lane, peaks in enumerate(self.peaks):
            block = self._next_block(self.track.lane_final(lane), peaks)
            if block is None:
                continue
            start, n = block
            self.track.read_lane_into(lane, start, self._block[:n], self._scratch[:n])
            peaks.add(start, self._block[:n])
            worked = True
        return worked

    def _next_block(self, final: Intervals, peaks: Peaks) -> tuple[int, int] | None:
        """(start, frames) of the next whole bins that are final but not built, if any: the
        first such range (a bin straddling an island's edge waits for its neighbour)."""
        frames = self.track.frames
        for a, b in final.minus(peaks.valid):
            start = -(-a // BASE_FRAMES) * BASE_FRAMES
            stop = b if b >= frames else b // BASE_FRAMES * BASE_FRAMES
            n = min(BUILD_BLOCK, stop - start)
            if n > 0:
                return start, n
        return None

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._stop.is_set():
                    return
                worked = self.step()
            if self.complete:
                if self.on_complete is not None:
                    self.on_complete(self.peaks)
                return
            # NB: a pause after each block hands the GIL and the core back to the GUI thread
            self._stop.wait(0.002 if worked else 0.02)
