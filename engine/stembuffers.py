"""Disk-backed stem buffers that grow while a song separates.

One raw float32 file per stem, frames interleaved (N, C), plus `stems.json`. Writes and reads
use positional I/O (`os.pwrite`/`os.preadv`) instead of memory maps, so the process's resident
memory stays flat however long the song is: mapped file pages would count towards RSS.

What is final is a set of intervals (`final`, `engine.intervals.Intervals`): a seek-first
separation finishes the song out of order. `ready_frames` is its prefix, how far the stems are
final from the start without a gap (what an in-order run reports).

Resumable runs: after `begin(record)`, `set_final` checkpoints now and then (at most every
`CHECKPOINT_EVERY_S`, and at the end): the stems' data is fsynced first, then `stems.json`
is replaced atomically with the final intervals (`final`, and their prefix `ready_frames`)
and the record (what a resume must reproduce), so after a kill or a power loss the index never
claims more than what is on disk. `StemBuffers.resume(folder)` reopens such a folder for
writing outside its final intervals; `read_index(folder)` reads the index without opening
anything, and `final_of(index)` its intervals.

NB: threads. The separator thread is the only writer; it writes a region, then publishes a
new `final` (one reference store; CPython makes it atomic). Readers on other threads (player
feeder, GUI) only read inside `final`, regions that are never written again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.atomicio import write_text_atomic
from engine.intervals import Intervals

INDEX = "stems.json"
# fsync + index at most this often (one costs ~65 ms on a busy ext4 disk); tests that
# interrupt a real process set DEMIXER_CHECKPOINT_EVERY_S=0 to checkpoint every chunk.
CHECKPOINT_EVERY_S = float(os.environ.get("DEMIXER_CHECKPOINT_EVERY_S", "2.0"))


def read_index(directory: Path) -> dict[str, Any] | None:
    """The folder's `stems.json` as a dict, or None if absent, unreadable or not an object."""
    try:
        info = json.loads((Path(directory) / INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def final_of(info: dict[str, Any]) -> Intervals:
    """The final intervals an index records (`final`; older indexes: [0, ready_frames)).
    Raises KeyError, TypeError or ValueError on a damaged index."""
    if "final" in info:
        return Intervals((int(a), int(b)) for a, b in info["final"])
    return Intervals.upto(int(info["ready_frames"]))


class StemBuffers:
    def __init__(self, directory: Path, sources: Sequence[str], channels: int, frames: int,
                 samplerate: int, *, create: bool = True, writable: bool | None = None,
                 ready_frames: int | None = None, final: Intervals | None = None) -> None:
        """`create` makes empty stems (truncating any); else the files are opened as they
        are, read-only unless `writable` (a resume). What is final: `final`, else
        [0, `ready_frames`), else nothing for new stems and everything for opened ones."""
        self.directory = Path(directory)
        self.sources = list(sources)
        self.channels = channels
        self.frames = frames
        self.samplerate = samplerate
        if final is None:
            final = Intervals.upto((0 if create else frames) if ready_frames is None
                                   else ready_frames)
        self.final = final
        self.record: dict[str, Any] | None = None  # set by begin(): makes checkpoints
        self._last_checkpoint = 0.0
        writable = create if writable is None else writable
        flags = (os.O_RDWR | os.O_CREAT | os.O_TRUNC if create else
                 os.O_RDWR if writable else os.O_RDONLY)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fds: list[int] = []
        try:
            for s in self.sources:
                self._fds.append(os.open(self.path(s), flags, 0o644))
            if create:
                for fd in self._fds:
                    os.ftruncate(fd, frames * channels * 4)
        except BaseException:
            self.close()
            raise

    @property
    def ready_frames(self) -> int:
        """How far the stems are final from frame 0 on without a gap."""
        return self.final.prefix

    @ready_frames.setter
    def ready_frames(self, frames: int) -> None:
        self.final = Intervals.upto(frames)

    @property
    def complete(self) -> bool:
        return self.final.covers(0, self.frames)

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
        """Fsync the stems, then write `stems.json` atomically (engine.atomicio)."""
        self.sync()
        info: dict[str, Any] = dict(
            sources=self.sources, channels=self.channels, frames=self.frames,
            samplerate=self.samplerate, complete=complete,
            ready_frames=self.frames if complete else self.ready_frames,
            final=Intervals.upto(self.frames).to_json() if complete else self.final.to_json())
        if self.record is not None:
            info["resume"] = self.record
        info.update(extra or {})
        write_text_atomic(self.directory / INDEX, json.dumps(info, indent=1))

    def sync(self) -> None:
        """Flush the stems' data to disk (before an index may claim it)."""
        for fd in self._fds:
            os.fsync(fd)

    def begin(self, record: dict[str, Any]) -> None:
        """Make this a resumable run: `record` (JSON-able) goes into every checkpoint."""
        self.record = record
        self.checkpoint()

    def checkpoint(self) -> None:
        """Record `final` durably (see module docstring); a no-op without `begin`."""
        if self.record is None:
            return
        self.save_index(complete=False)
        self._last_checkpoint = time.monotonic()

    def set_final(self, final: Intervals) -> None:
        """Publish a grown `final` (the separator's thread, after writing everything in it);
        checkpoint if one is due."""
        self.final = final
        due = time.monotonic() - self._last_checkpoint >= CHECKPOINT_EVERY_S
        if self.record is not None and (due or self.complete):
            self.checkpoint()

    def set_ready(self, frames: int) -> None:
        """`set_final` of [0, frames)."""
        self.set_final(Intervals.upto(frames))

    @classmethod
    def open(cls, directory: Path) -> StemBuffers:
        """Reopen stems (e.g. from the library), read-only; a partial run's stems are
        readable inside their recorded final intervals."""
        info = json.loads((Path(directory) / INDEX).read_text())
        final = None if info.get("complete", True) else final_of(
            {"ready_frames": 0, **info})
        return cls(Path(directory), info["sources"], info["channels"], info["frames"],
                   info["samplerate"], create=False, final=final)

    @classmethod
    def resume(cls, directory: Path) -> StemBuffers:
        """Reopen a checkpointed partial run for writing outside its final intervals.

        Raises ValueError if the index is missing or does not match the files on disk."""
        info = read_index(directory)
        if info is None or "resume" not in info:
            raise ValueError(f"{directory} holds no resumable stems")
        expected = int(info["frames"]) * int(info["channels"]) * 4
        for stem in info["sources"]:
            path = Path(directory) / f"{stem}.f32"
            if not path.is_file() or path.stat().st_size != expected:
                raise ValueError(f"{path} is missing or of the wrong size")
        stems = cls(Path(directory), info["sources"], int(info["channels"]),
                    int(info["frames"]), int(info["samplerate"]), create=False, writable=True,
                    final=final_of(info))
        stems.record = info["resume"]
        return stems

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
