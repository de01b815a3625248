"""The queue's total time left: the running song's ETA plus the songs waiting, at the pace
measured on this machine (seconds of work per second of audio). Qt-free.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from app.queue import QueueItem, State
from engine.decode import probe
from engine.errors import DemixerError


@lru_cache(maxsize=512)
def _seconds(path: Path, mtime_ns: int) -> float | None:
    try:
        rate, _, frames = probe(path)
    except (DemixerError, OSError):
        return None
    return None if frames is None else frames / rate


def song_seconds(item: QueueItem) -> float | None:
    """The song's length: from its decoded track if known, else from the file's header."""
    if item.info:
        return item.info.source_frames / item.info.source_rate
    try:
        return _seconds(item.path, item.path.stat().st_mtime_ns)
    except OSError:
        return None


def pace(items: Sequence[QueueItem], now: float | None = None) -> float | None:
    """Seconds of separation per second of audio: from the running song (its elapsed time
    plus its ETA), else from the songs finished in this session; None before any measure."""
    now = time.monotonic() if now is None else now
    for item in items:
        length = song_seconds(item)
        if item.state == State.SEPARATING and item.eta_s is not None and length and \
                item.stage == "separating" and item.fraction > item.resumed_at:
            done = item.fraction - item.resumed_at
            return (now - item.started + item.eta_s) / (length * (1 - item.resumed_at)) \
                if done < 1 else None
    work = [(i.seconds, song_seconds(i)) for i in items if i.state == State.DONE and i.seconds]
    audio = sum(s for _, s in work if s)
    return sum(w for w, s in work if s) / audio if audio else None


def total_eta(items: Sequence[QueueItem], now: float | None = None) -> float | None:
    """Seconds until every running and queued song is separated; None if not known yet."""
    rate = pace(items, now)
    left = 0.0
    for item in items:
        if item.state == State.SEPARATING and item.eta_s is not None and \
                item.stage == "separating":
            left += item.eta_s
        elif item.state in (State.QUEUED, State.PREPARING, State.SEPARATING):
            length = song_seconds(item)
            if rate is None or length is None:
                return None
            left += rate * length
    return left
