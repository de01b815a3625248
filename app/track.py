"""A song as the app sees it: lanes over disk-backed audio, and the gains they make. Qt-free.

A lane is what the track view draws and the mixer plays: one stem, a group of stems summed
(the two-stem mode's "instrumental"), or the original mix. Audio is (n, C) float32 frames at
the model's rate (44.1 kHz), read with positional I/O from `engine.stembuffers.StemBuffers`,
so any thread may read any lane below its ready mark.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from engine.intervals import Intervals
from engine.stembuffers import StemBuffers

ORIGINAL = "mix"  # the lane (and StemBuffers source) of the original mix
COLOURS = {
    "drums": "#e8833a", "bass": "#4c9be8", "other": "#9b6ce0", "vocals": "#e84c6a",
    "guitar": "#3fbf7f", "piano": "#d9b52c", "instrumental": "#3fb3a8", ORIGINAL: "#8a8f98",
}
TITLES = {"other": "Other", ORIGINAL: "Original mix", "instrumental": "Instrumental"}


@dataclass(frozen=True)
class Lane:
    key: str
    title: str
    colour: str
    parts: tuple[str, ...]  # stems summed into this lane; (ORIGINAL,) for the original mix
    original: bool = False


def make_lanes(sources: Sequence[str], two_stems: bool) -> list[Lane]:
    """One lane per stem (or vocals + instrumental in two-stem mode), then the original."""
    def lane(key: str, parts: tuple[str, ...], original: bool = False) -> Lane:
        return Lane(key, TITLES.get(key, key.capitalize()), COLOURS.get(key, "#999999"), parts,
                    original)

    if two_stems and "vocals" in sources:
        rest = tuple(s for s in sources if s != "vocals")
        lanes = [lane("vocals", ("vocals",)), lane("instrumental", rest)]
    else:
        lanes = [lane(s, (s,)) for s in sources]
    return lanes + [lane(ORIGINAL, (ORIGINAL,), original=True)]


def lane_gains(volumes: Sequence[float], muted: Sequence[bool],
               soloed: Sequence[bool]) -> np.ndarray:
    """Per-lane gains, float32: with any lane soloed only soloed lanes sound (mute ignored,
    as on a mixing desk's solo-in-place); otherwise every unmuted lane at its volume."""
    vol = np.asarray(volumes, np.float32)
    if any(soloed):
        return np.where(np.asarray(soloed), vol, np.float32(0)).astype(np.float32)
    return np.where(np.asarray(muted), np.float32(0), vol).astype(np.float32)


def slider_gain(value: int) -> float:
    """Volume slider 0..100 -> gain, squared so the travel feels even (50 = -12 dB)."""
    return (max(0, min(100, value)) / 100.0) ** 2


class ReadyMark(Protocol):
    ready_frames: int  # [0, ready_frames) is final; a `final` attribute (Intervals), if
    # present, says everything that is (a seek-first separation finishes out of order)


class TrackAudio:
    """A song's lanes over its stems (growing while it separates) and its original mix.

    `stems` and `mix` are read-only `StemBuffers` owned by this object (their own file
    descriptors, so a job discarding its stems cannot pull them away mid-read). `progress`
    is whatever raises `ready_frames` (and grows `final`) while the song separates, or None
    when the stems are complete.
    NB: threads. `ready_frames` is a plain int read and `final` one reference read (an
    immutable `Intervals`); the stems inside them are never rewritten (the whole argument:
    docs/architecture.md, "The ready mark").
    """

    def __init__(self, title: str, stems: StemBuffers, mix: StemBuffers, lanes: list[Lane],
                 progress: ReadyMark | None = None, *, source_rate: int | None = None,
                 source_frames: int | None = None) -> None:
        self.title = title
        self.stems = stems
        self.mix = mix
        self.lanes = lanes
        self.progress = progress
        self.frames = stems.frames
        self.samplerate = stems.samplerate
        self.channels = stems.channels
        self.source_rate = source_rate or self.samplerate
        self.source_frames = source_frames or self.frames

    @property
    def ready_frames(self) -> int:
        if self.progress is None:
            return self.frames
        return min(self.frames, int(self.progress.ready_frames))

    @property
    def final(self) -> Intervals:
        """Where the stems are final (all of the song once complete)."""
        if self.progress is None:
            return Intervals.upto(self.frames)
        final = getattr(self.progress, "final", None)
        return final if final is not None else Intervals.upto(self.ready_frames)

    @property
    def complete(self) -> bool:
        return self.ready_frames >= self.frames

    def playable_end(self, frame: int) -> int:
        """How far playback may go from `frame` without a gap (`frame` if it is not final)."""
        if self.progress is None:
            return self.frames
        return min(self.frames, self.final.end_at(frame))

    def lane_ready(self, lane: int) -> int:
        return self.frames if self.lanes[lane].original else self.ready_frames

    def lane_final(self, lane: int) -> Intervals:
        """Where lane `lane` is final (the original mix: all of it)."""
        return Intervals.upto(self.frames) if self.lanes[lane].original else self.final

    def read_lane_into(self, lane: int, start: int, out: np.ndarray,
                       scratch: np.ndarray) -> None:
        """Fill `out` (n, C) float32 with lane `lane` from frame `start` (zeros past the end);
        `scratch` is a same-shaped buffer for summing grouped stems."""
        parts = self.lanes[lane].parts
        if self.lanes[lane].original:
            self.mix.read_into(0, start, out)
            return
        self.stems.read_into(parts[0], start, out)
        for part in parts[1:]:
            self.stems.read_into(part, start, scratch)
            np.add(out, scratch, out=out)

    def part_views(self, lane: int) -> list:
        """(C, N) array-likes of the stems summed into `lane`, for `engine.writers`."""
        if self.lanes[lane].original:
            return [self.mix.view(0)]
        return [self.stems.view(p) for p in self.lanes[lane].parts]

    def close(self) -> None:
        self.stems.close()
        self.mix.close()
