"""Playing a song separated out of order: the mixer inside final intervals, at their edges
and across a join, called as PortAudio would call it, with a fake `outdata`.

The track's progress carries `final` (an `engine.intervals.Intervals`) as the app's
`LiveProgress` does; the tests grow it as a seek-first separation would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.mixer import RAMP_FRAMES, Mixer
from engine.intervals import Intervals
from tests.app.helpers import growing_track, stems_audio
from tests.app.test_mixer import feed, lanes_of, mixed, ramp, run

FRAMES = 60_000
GAINS = [1.0] * 4 + [0.0]


def _setup(tmp_path: Path, final: Intervals):  # type: ignore[no-untyped-def]
    stems = stems_audio(FRAMES)
    track, progress = growing_track(tmp_path, stems, ready=FRAMES)  # all written on disk
    progress.final, progress.ready_frames = final, final.prefix  # what is final so far
    mixer = Mixer()
    mixer.load(track, GAINS)
    return mixer, track, progress, lanes_of(stems)


def _play(mixer: Mixer, frames: int, block: int = 1024) -> np.ndarray:
    out = []
    for _ in range(frames // block):
        feed(mixer)
        out.append(run(mixer, block))
    return np.concatenate(out)


def test_a_seek_past_what_is_final_waits_there_then_plays_from_there(tmp_path: Path) -> None:
    mixer, track, progress, lanes = _setup(tmp_path, Intervals([(0, 10_000)]))
    assert mixer.seek(30_000) == 30_000  # goes there: the separator is asked to go there too
    mixer.play()
    assert np.all(_play(mixer, 4096) == 0)  # nothing final there yet: silence, no stale audio
    assert mixer.position == 30_000 and mixer.waiting
    progress.final = Intervals([(0, 10_000), (28_000, 45_000)])  # the seek's island arrives
    out = _play(mixer, 2048)
    np.testing.assert_allclose(out, mixed(lanes, GAINS, 30_000, 2048) * ramp(0, 2048),
                               atol=1e-6)  # fading in from the playhead
    assert mixer.position == 32_048 and not mixer.waiting
    track.close()


def test_playback_stops_at_an_island_edge_with_a_fade_and_waits(tmp_path: Path) -> None:
    mixer, track, progress, lanes = _setup(tmp_path, Intervals([(0, 5000), (20_000, 30_000)]))
    mixer.seek(25_000)
    mixer.play()
    out = _play(mixer, 8 * 1024)
    assert mixer.position == 30_000 and mixer.waiting
    edge = 5000 - RAMP_FRAMES  # frames of `out` before the fade towards 30,000
    np.testing.assert_allclose(out[RAMP_FRAMES:edge],
                               mixed(lanes, GAINS, 25_000, edge)[RAMP_FRAMES:], atol=1e-6)
    fade = ((RAMP_FRAMES - np.arange(RAMP_FRAMES)) / RAMP_FRAMES)[:, None]
    np.testing.assert_allclose(out[edge:5000],
                               mixed(lanes, GAINS, 30_000 - RAMP_FRAMES, RAMP_FRAMES) * fade,
                               atol=1e-6)
    assert np.abs(out[4999]).max() < 0.01  # reaches ~0 at the edge: no click
    assert np.all(out[5000:] == 0)
    progress.final = Intervals([(0, 5000), (20_000, 40_000)])  # the gap after it is filled
    np.testing.assert_allclose(_play(mixer, 1024), mixed(lanes, GAINS, 30_000, 1024) *
                               ramp(0, 1024), atol=1e-6)  # and it fades in again
    track.close()


def test_a_join_ahead_of_the_playhead_is_crossed_without_a_seam(tmp_path: Path) -> None:
    mixer, track, progress, lanes = _setup(tmp_path, Intervals([(20_000, 30_000)]))
    mixer.seek(20_000)
    mixer.play()
    first = _play(mixer, 4 * 1024)  # to 24,096: the edge at 30,000 is still ahead
    progress.final = Intervals([(20_000, 30_000), (30_000, 50_000)])  # the next one joins
    second = _play(mixer, 12 * 1024)  # across 30,000
    played = np.concatenate([first, second])
    np.testing.assert_allclose(played[RAMP_FRAMES:], mixed(lanes, GAINS, 20_000, len(
        played))[RAMP_FRAMES:], atol=1e-6)  # sample for sample: no fade, no gap at the join
    assert mixer.position == 20_000 + len(played) and not mixer.waiting
    track.close()


def test_jumping_back_into_a_finished_island_plays_at_once(tmp_path: Path) -> None:
    mixer, track, progress, lanes = _setup(tmp_path, Intervals([(0, 8000), (30_000, 50_000)]))
    mixer.seek(40_000)
    mixer.play()
    _play(mixer, 2048)
    mixer.seek(2000)  # back into the first island
    run(mixer, 64)  # the callback takes up the seek
    out = _play(mixer, 2048)
    np.testing.assert_allclose(out, mixed(lanes, GAINS, 2000, 2048) * ramp(0, 2048), atol=1e-6)
    track.close()
