"""Disk-backed stem buffers that grow while a song separates.

One raw float32 file per stem, frames interleaved (N, C), plus `stems.json`. Writes and reads
use positional I/O (`os.pwrite`/`os.preadv`) instead of memory maps, so the process's resident
memory stays flat however long the song is: mapped file pages would count towards RSS.

NB: threads. The separator thread is the only writer; it writes a region, then raises
`ready_frames` (a plain int; CPython makes the store atomic). Readers on other threads (player
feeder, GUI) only read below `ready_frames`, a region that is never written again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

INDEX = "stems.json"


class StemBuffers:
    def __init__(self, directory: Path, sources: Sequence[str], channels: int, frames: int,
                 samplerate: int, *, create: bool = True) -> None:
        self.directory = Path(directory)
        self.sources = list(sources)
        self.channels = channels
        self.frames = frames
        self.samplerate = samplerate
        self.ready_frames = frames if not create else 0
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC if create else os.O_RDONLY
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fds = [os.open(self.path(s), flags, 0o644) for s in self.sources]
        if create:
            for fd in self._fds:
                os.ftruncate(fd, frames * channels * 4)

    def path(self, stem: str) -> Path:
        return self.directory / f"{stem}.f32"

    def index(self, stem: int | str) -> int:
        return stem if isinstance(stem, int) else self.sources.index(stem)

    def write(self, start: int, block: np.ndarray) -> None:
        """Write (S, C, n) float32 samples at frame `start` (the separator thread only)."""
        for fd, stem in zip(self._fds, block, strict=True):
            data = np.ascontiguousarray(stem.T, dtype=np.float32)
            os.pwrite(fd, data.data.cast("B"), start * self.channels * 4)

    def read_into(self, stem: int | str, start: int, out: np.ndarray) -> int:
        """Fill `out` (n, C) float32 from frame `start`; returns the frames read (rest zeroed)."""
        fd = self._fds[self.index(stem)]
        want = min(out.shape[0], max(0, self.frames - start))
        got = os.preadv(fd, [out.data.cast("B")[: want * self.channels * 4]],
                        start * self.channels * 4) if want else 0
        frames = got // (self.channels * 4)
        out[frames:] = 0.0
        return frames

    def read(self, stem: int | str, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) of one stem as (C, n) float32."""
        buf = np.empty((max(0, stop - start), self.channels), np.float32)
        self.read_into(stem, start, buf)
        return buf.T

    def view(self, stem: int | str) -> StemView:
        return StemView(self, self.index(stem))

    def save_index(self, complete: bool, extra: dict | None = None) -> None:
        info = dict(sources=self.sources, channels=self.channels, frames=self.frames,
                    samplerate=self.samplerate, complete=complete, **(extra or {}))
        tmp = self.directory / (INDEX + ".tmp")
        tmp.write_text(json.dumps(info, indent=1))
        os.replace(tmp, self.directory / INDEX)

    @classmethod
    def open(cls, directory: Path) -> StemBuffers:
        """Reopen finished stems (e.g. from the library), read-only."""
        info = json.loads((Path(directory) / INDEX).read_text())
        return cls(Path(directory), info["sources"], info["channels"], info["frames"],
                   info["samplerate"], create=False)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []


class StemView:
    """One stem as a read-only (C, N) array-like: `view[:, a:b]` reads from disk."""

    dtype = np.dtype(np.float32)

    def __init__(self, buffers: StemBuffers, stem: int) -> None:
        self.buffers = buffers
        self.stem = stem
        self.shape = (buffers.channels, buffers.frames)
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        start, stop, step = cols.indices(self.shape[1])
        if step != 1:
            raise IndexError("StemView supports contiguous column slices only")
        return self.buffers.read(self.stem, start, stop)[rows]

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        return self[:, :].astype(dtype or np.float32, copy=False)


def read_track_window(audio: np.ndarray, start: int, length: int) -> np.ndarray:
    """Samples [start, start+length) of a (C, N) track, zeros outside it, as (C, length).

    For a file-backed `np.memmap` this reads with positional I/O instead of touching the
    mapping, so reading a whole long track does not grow RSS.
    """
    C, N = audio.shape
    out = np.zeros((C, length), np.float32)
    a, b = max(start, 0), min(start + length, N)
    if b <= a:
        return out
    if isinstance(audio, np.memmap) and audio.flags.c_contiguous and audio.filename:
        with open(audio.filename, "rb") as f:
            for c in range(C):
                f.seek(audio.offset + (c * N + a) * 4)
                f.readinto(out[c, a - start:b - start].data.cast("B"))
    else:
        out[:, a - start:b - start] = audio[:, a:b]
    return out
