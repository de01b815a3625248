"""A song's mix as the listener left it: per-lane volume, mute and solo, the A–B loop, the
speed and the pitch. Kept in the library entry (`LibraryEntry.song_mix`, JSON) and restored
when the song is reopened. Qt-free.

Lanes are keyed by their `Lane.key` ("drums", "original"...), so a mix still fits when the
lanes come in another order; values that do not fit (a damaged or hand-edited entry) fall
back to the defaults, one by one, rather than losing the song.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from app.practice import Practice, make_loop
from app.stretch import Rate
from app.track import Lane


@dataclass(frozen=True)
class LaneMix:
    volume: int = 100  # the slider, 0..100 (app.track.slider_gain)
    mute: bool = False
    solo: bool = False


@dataclass(frozen=True)
class SongMix:
    lanes: dict[str, LaneMix] = field(default_factory=dict)
    loop: tuple[int, int] | None = None  # frames at the track's rate
    rate: Rate = field(default_factory=Rate)

    def lane(self, lane: Lane) -> LaneMix:
        """This lane's mix; a lane never set sounds (the original is muted, to compare)."""
        return self.lanes.get(lane.key, LaneMix(mute=lane.original))

    def shaped(self, lanes: list[Lane]) -> bool:
        """Whether a lane is muted or soloed other than by default (Export then starts from
        "the current mix")."""
        return any(self.lane(x).solo or self.lane(x).mute != x.original for x in lanes)

    def practice(self, frames: int) -> Practice:
        loop = make_loop(*self.loop, frames) if self.loop else None
        return Practice(loop=loop, rate=self.rate.clamped())

    def to_json(self) -> dict[str, Any]:
        return {"lanes": {k: {"volume": v.volume, "mute": v.mute, "solo": v.solo}
                          for k, v in self.lanes.items()},
                "loop": list(self.loop) if self.loop else None,
                "speed": self.rate.speed, "semitones": self.rate.semitones}

    @classmethod
    def from_json(cls, raw: object) -> SongMix:
        """Whatever of `raw` fits; the rest at its default."""
        info = raw if isinstance(raw, dict) else {}
        lanes = info.get("lanes")
        loop = info.get("loop")
        return cls(
            lanes={str(k): _lane(v) for k, v in lanes.items()} if isinstance(lanes, dict) else {},
            loop=(int(loop[0]), int(loop[1])) if isinstance(loop, list) and len(loop) == 2
            and all(_int(x) for x in loop) else None,
            rate=Rate(_number(info.get("speed"), 1.0), _number(info.get("semitones"), 0.0))
            .clamped())


def _int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _number(x: object, default: float) -> float:
    ok = isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    return float(x) if ok else default  # type: ignore[arg-type]


def _lane(raw: object) -> LaneMix:
    info = raw if isinstance(raw, dict) else {}
    volume = info.get("volume")
    return LaneMix(volume=min(100, volume) if isinstance(volume, int) and _int(volume) else 100,
                   mute=info.get("mute") is True, solo=info.get("solo") is True)
