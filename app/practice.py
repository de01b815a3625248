"""Practice tools on the feeder side: the A–B loop and speed/pitch, as a `Shaper`. Qt-free.

The mixer's feeder asks a `Shaper` for the next frames the ring should play; the shaper reads
the song's lanes from its source position, loops at B back to A with a short crossfade at the
seam, and, when the speed or pitch differs from 1×/0, passes them through `app.stretch`.
Every output frame comes with the source frame it plays (float64), which the mixer keeps so
the playhead shows where in the song the listener is.

Shapes: lane audio is float32 (lanes, n, C) at the track's rate (44.1 kHz), like the ring.
NB: a `Shaper` is used by the feeder thread only; the GUI hands it settings as a new frozen
`Practice` object assigned to the mixer session.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from app.stretch import Rate, Stretch
from app.track import TrackAudio

SEAM_FRAMES = 441  # 10 ms crossfade where the loop jumps from B back to A
MIN_LOOP_FRAMES = 4 * SEAM_FRAMES


@dataclass(frozen=True)
class Loop:
    """Play frames [a, b) over and over (track frames, a < b)."""

    a: int
    b: int

    @property
    def seam(self) -> int:
        """Crossfade length: 10 ms, or less for a very short loop."""
        return max(0, min(SEAM_FRAMES, (self.b - self.a) // 2))

    @property
    def resume(self) -> int:
        """Where reading goes on after the seam: A, or later when A is too near the start."""
        return max(self.a, self.seam)


@dataclass(frozen=True)
class Practice:
    """The listener's practice settings for one song; replaced whole, never mutated."""

    loop: Loop | None = None
    rate: Rate = field(default_factory=Rate)


def make_loop(a: int, b: int, frames: int) -> Loop | None:
    """A loop from two marks in either order, clamped to the song; None when too short."""
    a, b = sorted((max(0, min(int(a), frames)), max(0, min(int(b), frames))))
    return Loop(a, b) if b - a >= MIN_LOOP_FRAMES else None


def ready_until(track: TrackAudio, pos: int) -> int:
    """The end of the playable run of source frames that contains `pos` (exclusive): the end
    of the final interval holding it (`pos` itself where nothing is final yet)."""
    return track.playable_end(pos)


class LoopReader:
    """Reads lanes forward from a source position, looping at B with a crossfade."""

    def __init__(self, track: TrackAudio, max_frames: int) -> None:
        self.track = track
        lanes, c = len(track.lanes), track.channels
        self._scratch = np.zeros((max_frames, c), np.float32)
        self._fade_in = np.zeros((lanes, SEAM_FRAMES, c), np.float32)
        self.pos = 0

    def readable(self, loop: Loop | None, n: int) -> int:
        """How many of the next n frames can be read now (the ready region may end)."""
        edge = ready_until(self.track, self.pos)
        if loop is not None and loop.a <= self.pos < loop.b and loop.b <= edge:
            return n
        return max(0, min(n, edge - self.pos))

    def read(self, loop: Loop | None, out: np.ndarray, src: np.ndarray) -> None:
        """Fill out (lanes, n, C) and src (n,) with the next n frames (n <= readable)."""
        n, j = out.shape[1], 0
        while j < n:
            looping = loop is not None and loop.a <= self.pos < loop.b
            if not looping:
                stop = loop.a if loop is not None and self.pos < loop.a else self.pos + n
                k = min(n - j, stop - self.pos)
                self._plain(out[:, j:j + k], src[j:j + k])
                j += k
                continue
            assert loop is not None
            seam_at = loop.b - loop.seam
            if self.pos < seam_at:
                k = min(n - j, seam_at - self.pos)
                self._plain(out[:, j:j + k], src[j:j + k])
            else:
                k = min(n - j, loop.b - self.pos)
                self._seam(loop, out[:, j:j + k], src[j:j + k])
            j += k

    def _plain(self, out: np.ndarray, src: np.ndarray) -> None:
        k = out.shape[1]
        for lane in range(out.shape[0]):
            self.track.read_lane_into(lane, self.pos, out[lane], self._scratch[:k])
        src[:] = np.arange(self.pos, self.pos + k, dtype=np.float64)
        self.pos += k

    def _seam(self, loop: Loop, out: np.ndarray, src: np.ndarray) -> None:
        """The last `seam` frames before B, faded out, plus those before the resume point,
        faded in (equal-gain: the two are the same music, so their phases mostly agree)."""
        k, off = out.shape[1], self.pos - (loop.b - loop.seam)
        self._plain(out, src)
        fade_in = self._fade_in[:, :k]
        for lane in range(out.shape[0]):
            self.track.read_lane_into(lane, loop.resume - loop.seam + off, fade_in[lane],
                                      self._scratch[:k])
        w = ((np.arange(k, dtype=np.float32) + off + 1) / (loop.seam + 1))[None, :, None]
        out *= 1.0 - w
        out += fade_in * w
        if self.pos >= loop.b:
            self.pos = loop.resume


class Shaper:
    """What the ring plays next: the song's lanes, looped, stretched (see module doc)."""

    def __init__(self, track: TrackAudio, max_frames: int) -> None:
        self.track = track
        self.reader = LoopReader(track, max_frames)
        self.practice = Practice()
        self.audible: tuple[bool, ...] = ()
        self._stretch: Stretch | None = None
        self._in = np.zeros((len(track.lanes), 1024, track.channels), np.float32)
        self._in_src = np.zeros(1024, np.float64)
        self._queue = np.zeros(0, np.float64)  # source frames of the input not yet played
        self._cursor = 0.0  # index into _queue of the next output frame
        self._flushed = False

    def restart(self, pos: int, practice: Practice, audible: tuple[bool, ...] = ()) -> None:
        """Go on from source frame `pos` with `practice` (after a seek or a change);
        `audible` (per lane, default all): the lanes worth stretching."""
        self.practice, self.audible = practice, audible
        self.reader.pos = int(pos)
        self._queue, self._cursor, self._flushed = np.zeros(0, np.float64), 0.0, False
        rate = practice.rate
        active = [i for i, on in enumerate(audible) if on] if audible else None
        self._stretch = None if rate.identity else Stretch(
            len(self.track.lanes), self.track.channels, self.track.samplerate, rate, active)
        if self._stretch is not None:
            self._prime(self._stretch, int(pos))

    def _prime(self, stretch: Stretch, pos: int) -> None:
        """Feed the frames just before `pos`, so the first stretched frame is `pos`."""
        pre = np.zeros((len(self.track.lanes), stretch.pre_roll, self.track.channels),
                       np.float32)
        first = max(0, pos - stretch.pre_roll)
        scratch = np.zeros_like(pre[0])
        for lane in range(pre.shape[0]):
            tail = pre[lane, stretch.pre_roll - (pos - first):]
            self.track.read_lane_into(lane, first, tail, scratch[:len(tail)])
        stretch.prime(pre)

    @property
    def exhausted(self) -> bool:
        """Everything of the song has been produced (no loop holds the reader back).
        NB: read by the GUI thread; plain attribute reads."""
        done = self.track.complete and self.reader.pos >= self.track.frames
        return done and (self._stretch is None or (self._flushed and not self._stretch.available))

    @property
    def next_source(self) -> int:
        """The song frame the next produced frame will play."""
        if self._stretch is None or not len(self._queue):
            return self.reader.pos
        return int(self._queue[min(int(self._cursor), len(self._queue) - 1)])

    def produce(self, out: np.ndarray, src: np.ndarray) -> int:
        """Fill up to n frames of out (lanes, n, C) and src (n,); returns how many."""
        loop, n = self.practice.loop, out.shape[1]
        if self._stretch is None:
            k = self.reader.readable(loop, n)
            if k:
                self.reader.read(loop, out[:, :k], src[:k])
            return k
        return self._produce_stretched(self._stretch, out, src)

    def _produce_stretched(self, stretch: Stretch, out: np.ndarray, src: np.ndarray) -> int:
        loop, n = self.practice.loop, out.shape[1]
        while stretch.available < n and not self._flushed:
            k = self.reader.readable(loop, self._in.shape[1])
            if k == 0:
                if self.track.complete and self.reader.pos >= self.track.frames:
                    stretch.push(np.zeros_like(self._in), final=True)  # flush the tail
                    self._flushed = True
                break
            self.reader.read(loop, self._in[:, :k], self._in_src[:k])
            stretch.push(self._in[:, :k])
            self._queue = np.concatenate([self._queue, self._in_src[:k]])
        k = stretch.pull(out)
        self._source_of_output(k, stretch.rate.speed, src)
        return k

    def _source_of_output(self, k: int, speed: float, src: np.ndarray) -> None:
        """The source frame under each of the k frames just produced (speed frames apart)."""
        idx = self._cursor + speed * np.arange(k)
        last = max(len(self._queue) - 1, 0)
        src[:k] = self._queue[np.minimum(idx.astype(np.int64), last)] if len(self._queue) \
            else self.reader.pos
        self._cursor += speed * k
        drop = min(int(self._cursor), len(self._queue))
        self._queue, self._cursor = self._queue[drop:], self._cursor - drop
