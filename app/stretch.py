"""Speed and pitch: Rubber Band (R3 engine, short window) through `pylibrb`. Qt-free.

Why this library (measured by tests/benchmarks/bench_stretch.py, see the README): Rubber
Band's R3 engine with its short window held a 440 Hz tone at +2 semitones at 493.88 Hz, kept
a drum hit's attack (2.5 ms 10→90 % rise against 2.0 ms in the input, the R2 engine smeared it
to 17.5 ms), for about 3.7 % of one core per stereo stream here, with 1,280 frames (29 ms) of
latency; `pylibrb` ships wheels for macOS arm64 and x86_64, so no command-line tool is needed.

Audio here is float32 (n, C) at the track's rate (44.1 kHz for the models), like the mixer's
ring; pylibrb wants (C, n), so blocks are transposed on the way in and out.
NB: a `Stretch` belongs to one thread (the mixer's feeder, or an export thread).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pylibrb

SPEED_RANGE = (0.5, 1.5)
SEMITONE_RANGE = (-12, 12)
PUSH_FRAMES = 1024  # input frames per process() call: bounds the GIL hold to well under 1 ms


@dataclass(frozen=True)
class Rate:
    """Playback speed (1.0 = as recorded, tempo only) and transposition in semitones."""

    speed: float = 1.0
    semitones: float = 0.0

    @property
    def identity(self) -> bool:
        return self.speed == 1.0 and self.semitones == 0.0

    @property
    def pitch_scale(self) -> float:
        return float(2.0 ** (self.semitones / 12.0))

    def clamped(self) -> Rate:
        return Rate(min(max(self.speed, SPEED_RANGE[0]), SPEED_RANGE[1]),
                    min(max(self.semitones, SEMITONE_RANGE[0]), SEMITONE_RANGE[1]))


def _options() -> pylibrb.Option:
    o = pylibrb.Option
    return o.PROCESS_REALTIME | o.ENGINE_FINER | o.WINDOW_SHORT


class Stretch:
    """One real-time stretcher per audible lane, all with the same rate, so the lanes stay
    aligned; the other lanes come out silent (a muted lane costs nothing).

    Blocks in and out are (lanes, n, C) over all lanes; `active` says which are stretched.
    `prime(pre)` feeds the audio just before the start point and drops the start delay, so the
    first frame out is the start point itself (no silence, no latency at a restart).
    """

    def __init__(self, lanes: int, channels: int, samplerate: int, rate: Rate,
                 active: Sequence[int] | None = None) -> None:
        self.rate = rate
        self.active = list(range(lanes)) if active is None else list(active) or [0]
        self._rbs = [pylibrb.RubberBandStretcher(samplerate, channels, _options(),
                                                 1.0 / rate.speed, rate.pitch_scale)
                     for _ in self.active]
        self._pending = [np.zeros((0, channels), np.float32) for _ in self.active]
        self._skip = 0

    @property
    def pre_roll(self) -> int:
        """How many frames before the start point `prime` wants."""
        return int(self._rbs[0].get_preferred_start_pad())

    def set_rate(self, rate: Rate) -> None:
        self.rate = rate
        for rb in self._rbs:
            rb.time_ratio = 1.0 / rate.speed
            rb.pitch_scale = rate.pitch_scale

    def prime(self, pre: np.ndarray) -> None:
        """pre: (lanes, pre_roll, C) float32, the source frames before the start point."""
        self._skip = int(self._rbs[0].get_start_delay())
        self.push(pre)

    def push(self, block: np.ndarray, final: bool = False) -> None:
        """block: (lanes, n, C) float32 source frames, in order."""
        for i in range(0, max(1, block.shape[1]), PUSH_FRAMES):
            part = block[:, i:i + PUSH_FRAMES]
            last = final and i + PUSH_FRAMES >= block.shape[1]
            for i, (lane, rb) in enumerate(zip(self.active, self._rbs, strict=True)):
                rb.process(np.ascontiguousarray(part[lane].T), last)
                got = rb.retrieve_available().T
                self._pending[i] = np.concatenate([self._pending[i], got])
        self._drop_start_delay()

    def _drop_start_delay(self) -> None:
        k = min(self._skip, min(len(p) for p in self._pending))
        if k:
            self._pending = [p[k:] for p in self._pending]
            self._skip -= k

    @property
    def available(self) -> int:
        return 0 if self._skip else min(len(p) for p in self._pending)

    def pull(self, out: np.ndarray) -> int:
        """Move up to out.shape[1] stretched frames into out (lanes, n, C); returns how many."""
        k = min(out.shape[1], self.available)
        out[:, :k] = 0.0
        for i, lane in enumerate(self.active):
            out[lane, :k] = self._pending[i][:k]
            self._pending[i] = self._pending[i][k:]
        return k


def stretch_audio(audio: np.ndarray, samplerate: int, rate: Rate) -> np.ndarray:
    """A whole (n, C) float32 signal at `rate` (for export and tests): about n / speed frames.

    The start is primed with silence (the signal has nothing before it) and the end is flushed,
    so the result is the full stretched signal, aligned to the input's start.
    """
    if rate.identity:
        return audio.astype(np.float32, copy=True)
    s = Stretch(1, audio.shape[1], samplerate, rate)
    s.prime(np.zeros((1, s.pre_roll, audio.shape[1]), np.float32))
    s.push(audio[None].astype(np.float32, copy=False), final=True)
    want = int(round(audio.shape[0] / rate.speed))
    out = np.zeros((1, want, audio.shape[1]), np.float32)
    s.pull(out)
    return out[0]
