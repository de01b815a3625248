"""Closing a song is deterministic: once `Mixer.release` / `PeakBuilder.stop` return, the
feeder and the peaks builder read the track no more, so its files can be closed; nothing
catches an error of a read on a closed file any more, so none may happen.

Each test closes a song many times at random moments while its thread reads (each read is
slowed down so that most closes land during one), and checks that no read ever ran on a
closed track, no read was in progress at a close, and no thread died of an exception.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.library import copy_mix
from app.mixer import Mixer
from app.peaks import PeakBuilder
from app.track import TrackAudio, make_lanes
from engine.stembuffers import StemBuffers
from tests.app.helpers import RATE, stems_audio, write_stems

ROUNDS = 40
FRAMES = 300_000


class Watch:
    """Counts reads in progress on one track and notes every read or close out of order."""

    def __init__(self, track: TrackAudio, first_read_s: float = 0.0003) -> None:
        self.track, self.reading, self.closed = track, 0, False
        self.delays = [first_read_s]
        self.problems: list[str] = []
        self.lock = threading.Lock()
        read, close = track.read_lane_into, track.close

        def watched_read(lane: int, start: int, out: np.ndarray, scratch: np.ndarray) -> None:
            with self.lock:
                if self.closed:
                    self.problems.append("read after close")
                self.reading += 1
            time.sleep(self.delays.pop() if self.delays else 0.0003)  # widen the window
            read(lane, start, out, scratch)
            with self.lock:
                self.reading -= 1

        def watched_close() -> None:
            with self.lock:
                if self.reading:
                    self.problems.append("close during a read")
                self.closed = True
            close()

        track.read_lane_into = watched_read  # type: ignore[method-assign]
        track.close = watched_close  # type: ignore[method-assign]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    stems = stems_audio(FRAMES)
    write_stems(tmp_path / "stems", stems).close()
    copy_mix(np.sum(list(stems.values()), axis=0).astype(np.float32), tmp_path / "mix", RATE)
    return tmp_path


@pytest.fixture
def thread_errors() -> Iterator[list[Any]]:
    """Exceptions that end any thread during the test (none may be swallowed either)."""
    seen: list[Any] = []
    before = threading.excepthook
    threading.excepthook = seen.append
    yield seen
    threading.excepthook = before


def wait_a_moment(watch: Watch, round_: int, rng: random.Random) -> None:
    """Every other round until a read is in progress (a close during a read, for sure), else
    a random moment (before, during or between reads)."""
    if round_ % 2:
        deadline = time.monotonic() + 5
        while not watch.reading and time.monotonic() < deadline:
            time.sleep(0.0001)
    else:
        time.sleep(rng.uniform(0.0, 0.004))


def open_track(folder: Path) -> TrackAudio:
    stems = StemBuffers.open(folder / "stems")
    return TrackAudio("song", stems, StemBuffers.open(folder / "mix"),
                      make_lanes(stems.sources, False))


def test_closing_a_song_while_the_feeder_reads_it(folder: Path,
                                                  thread_errors: list[Any]) -> None:
    mixer, rng, during = Mixer(), random.Random(5), 0
    mixer.start_feeder()
    try:
        for round_ in range(ROUNDS):
            watch = Watch(open_track(folder))
            mixer.load(watch.track)
            mixer.seek(rng.randrange(FRAMES // 2))
            wait_a_moment(watch, round_, rng)
            during += watch.reading > 0
            mixer.release(watch.track)
            watch.track.close()
            assert watch.problems == []
        time.sleep(0.02)  # the feeder carries on with no song
        assert mixer._feeder is not None and mixer._feeder.is_alive()
    finally:
        mixer.stop_feeder()
    assert thread_errors == []
    assert during >= ROUNDS // 2, f"only {during} closes fell during a read"


@pytest.mark.parametrize("what", ["feeder", "peaks"])
def test_a_close_waits_for_a_slow_read(folder: Path, thread_errors: list[Any],
                                       what: str) -> None:
    """A read that takes longer than any fixed wait (a disk that stalls: 2.5 s here) still
    ends before the close, not after (the mixer used to give up after 0.5 s, the builder's
    stop after 2 s)."""
    watch = Watch(open_track(folder), first_read_s=2.5)
    mixer, builder = Mixer(), PeakBuilder(watch.track)
    if what == "feeder":
        mixer.start_feeder()
        mixer.load(watch.track)
    else:
        builder.start()
    wait_a_moment(watch, 1, random.Random(0))
    assert watch.reading
    if what == "feeder":
        mixer.release(watch.track)
    else:
        builder.stop()
    watch.track.close()
    mixer.stop_feeder()
    assert watch.problems == [] and thread_errors == []


def test_closing_a_song_while_its_peaks_build(folder: Path,
                                              thread_errors: list[Any]) -> None:
    rng, during = random.Random(7), 0
    for round_ in range(ROUNDS):
        watch = Watch(open_track(folder))
        builder = PeakBuilder(watch.track)
        builder.start()
        wait_a_moment(watch, round_, rng)
        during += watch.reading > 0
        builder.stop()
        watch.track.close()
        assert watch.problems == []
    assert thread_errors == []
    assert during >= ROUNDS // 2, f"only {during} closes fell during a read"
