"""The playback mixer, called as PortAudio would call it, with a fake `outdata`."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from app.mixer import RAMP_FRAMES, Mixer
from app.track import lane_gains, slider_gain
from tests.app.helpers import growing_track, stems_audio

FRAMES = 44100


def ramp(start: int, n: int) -> np.ndarray:
    """The mixer's ramp position for frames start..start+n: min(1, (t + 1) / RAMP_FRAMES)."""
    return np.minimum(1.0, (start + np.arange(n) + 1) / RAMP_FRAMES)[:, None]


def lanes_of(stems: dict[str, np.ndarray]) -> list[np.ndarray]:
    """(N, C) audio per lane: the stems, then the original mix (their sum)."""
    parts = list(stems.values())
    return [p.T for p in parts] + [np.sum(parts, axis=0).astype(np.float32).T]


def mixed(lanes: list[np.ndarray], gains, start: int, n: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """sum_i gains[i] * lane_i[start:start+n]; `gains` per lane, scalars or (n, 1) columns."""
    return sum(np.asarray(g) * lane[start:start + n] for g, lane in zip(gains, lanes, strict=True))


def run(mixer: Mixer, frames: int) -> np.ndarray:
    """One callback into a buffer full of NaN (so an unwritten sample shows)."""
    out = np.full((frames, 2), np.nan, np.float32)
    mixer.callback(out, frames, None, 0)
    return out


def feed(mixer: Mixer) -> None:
    while mixer.fill_step():
        pass


@pytest.fixture
def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    stems = stems_audio(FRAMES)
    track, progress = growing_track(tmp_path, stems, ready=FRAMES)
    yield Mixer(), track, progress, lanes_of(stems)
    track.close()


def test_lane_gains_follow_mute_solo_and_volume() -> None:
    vol = [1.0, 0.5, 0.25, 1.0]
    assert lane_gains(vol, [False] * 4, [False] * 4).tolist() == [1.0, 0.5, 0.25, 1.0]
    assert lane_gains(vol, [True, False, False, True], [False] * 4).tolist() == [0, 0.5, 0.25, 0]
    # any solo: only soloed lanes sound, at their volume, even if also muted
    assert lane_gains(vol, [False, True, False, False],
                      [False, True, False, True]).tolist() == [0, 0.5, 0, 1.0]
    assert slider_gain(100) == 1.0 and slider_gain(50) == 0.25 and slider_gain(0) == 0.0


def test_callback_sums_lanes_sample_for_sample_after_fading_in(setup) -> None:  # type: ignore[no-untyped-def]
    mixer, track, _, lanes = setup
    gains = [1.0, 0.5, 0.0, 0.25, 0.0]  # the original (last lane) muted
    mixer.load(track, gains)
    feed(mixer)
    mixer.play()
    first = run(mixer, 512)  # play fades in over RAMP_FRAMES
    np.testing.assert_allclose(first, mixed(lanes, gains, 0, 512) * ramp(0, 512), atol=1e-6)
    second = run(mixer, 700)
    np.testing.assert_allclose(second, mixed(lanes, gains, 512, 700), atol=1e-6)
    assert mixer.position == 1212


def test_gain_change_ramps_over_10_ms_across_callbacks(setup) -> None:  # type: ignore[no-untyped-def]
    mixer, track, _, lanes = setup
    old = np.array([1.0, 1.0, 1.0, 1.0, 0.0])
    new = np.array([0.0, 1.0, 0.5, 1.0, 0.0])  # mute drums, halve other
    mixer.load(track, old)
    feed(mixer)
    mixer.play()
    run(mixer, 1000)  # past the fade-in
    mixer.set_gains(new)
    out = np.concatenate([run(mixer, 300), run(mixer, 300)])  # the ramp spans both
    r = ramp(0, 600)
    expected = mixed(lanes, [o + (n - o) * r for o, n in zip(old, new, strict=True)], 1000, 600)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert not np.allclose(out[:RAMP_FRAMES], mixed(lanes, new, 1000, RAMP_FRAMES), atol=1e-4)


def test_new_gains_mid_ramp_start_from_where_the_ramp_was(setup) -> None:  # type: ignore[no-untyped-def]
    mixer, track, _, lanes = setup
    a, b, c = np.ones(5), np.array([0, 1, 1, 1, 0.0]), np.array([1, 0, 1, 1, 0.0])
    mixer.load(track, a)
    feed(mixer)
    mixer.play()
    run(mixer, 1000)
    mixer.set_gains(b)
    run(mixer, 200)
    mixer.set_gains(c)
    out = run(mixer, 600)
    here = a + (b - a) * 200 / RAMP_FRAMES
    r = ramp(0, 600)
    expected = mixed(lanes, [h + (z - h) * r for h, z in zip(here, c, strict=True)], 1200, 600)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_pause_fades_out_then_holds_the_position(setup) -> None:  # type: ignore[no-untyped-def]
    mixer, track, _, lanes = setup
    gains = [1.0] * 4 + [0.0]
    mixer.load(track, gains)
    feed(mixer)
    mixer.play()
    run(mixer, 1000)
    mixer.pause()
    out = run(mixer, 512)
    np.testing.assert_allclose(out, mixed(lanes, gains, 1000, 512) * (1 - ramp(0, 512)),
                               atol=1e-6)
    held = mixer.position
    assert np.all(run(mixer, 512) == 0) and mixer.position == held


def test_silence_without_a_song_or_when_paused() -> None:
    mixer = Mixer()
    assert np.all(run(mixer, 256) == 0)
    mixer.play()
    assert np.all(run(mixer, 256) == 0)


def test_seek_plays_from_the_new_place(setup) -> None:  # type: ignore[no-untyped-def]
    mixer, track, _, lanes = setup
    gains = [1.0] * 4 + [0.0]
    mixer.load(track, gains)
    feed(mixer)
    mixer.play()
    run(mixer, 1000)
    assert mixer.seek(20000) == 20000
    assert mixer.position == 20000  # shown at once, before the callback takes it up
    run(mixer, 64)  # the callback takes the seek; the ring is not refilled yet: silence
    feed(mixer)
    out = run(mixer, 512)
    np.testing.assert_allclose(out, mixed(lanes, gains, 20000, 512) * ramp(0, 512), atol=1e-6)
    assert mixer.position == 20512


def test_never_plays_past_the_ready_region_and_waits_there(tmp_path: Path) -> None:
    stems = stems_audio(FRAMES)
    lanes = lanes_of(stems)
    track, progress = growing_track(tmp_path, stems, ready=10000)
    gains = [1.0] * 4 + [0.0]
    mixer = Mixer()
    mixer.load(track, gains)
    mixer.seek(0)
    mixer.play()
    outs = []
    for _ in range(15):  # 15 * 1024 frames asked for, 10000 available
        feed(mixer)
        outs.append(run(mixer, 1024))
    played = np.concatenate(outs)
    assert mixer.position == 10000 and mixer.waiting
    edge = 10000 - RAMP_FRAMES  # the last 10 ms fade out towards the edge
    np.testing.assert_allclose(played[RAMP_FRAMES:edge], mixed(lanes, gains, 0, edge)[
        RAMP_FRAMES:], atol=1e-6)
    fade = ((10000 - np.arange(edge, 10000)) / RAMP_FRAMES)[:, None]
    np.testing.assert_allclose(played[edge:10000], mixed(lanes, gains, edge, RAMP_FRAMES) * fade,
                               atol=1e-6)
    assert np.all(played[10000:] == 0)  # zeros past the final region, not stale audio
    progress.ready_frames = 20000  # separation moves on: playback resumes, fading in
    feed(mixer)
    out = run(mixer, 1024)
    np.testing.assert_allclose(out, mixed(lanes, gains, 10000, 1024) * ramp(0, 1024), atol=1e-6)
    assert mixer.position == 11024
    track.close()


def test_end_of_song_is_silence_with_the_playhead_at_the_end(tmp_path: Path) -> None:
    stems = stems_audio(3000)
    track, _ = growing_track(tmp_path, stems, ready=3000)
    mixer = Mixer()
    mixer.load(track)
    feed(mixer)
    mixer.play()
    out = run(mixer, 4096)
    assert mixer.position == 3000 and np.all(out[3000:] == 0) and not mixer.waiting
    track.close()


def test_callback_allocates_no_buffers(setup) -> None:  # type: ignore[no-untyped-def]
    mixer, track, _, _ = setup
    mixer.load(track, [1.0, 0.5, 0.25, 1.0, 0.0])
    feed(mixer)
    mixer.play()
    out = np.zeros((1024, 2), np.float32)
    mixer.callback(out, 1024, None, 0)  # warm up
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        mixer.set_gains([0.0, 1.0, 1.0, 0.5, 0.0])  # includes a ramp
        for _ in range(8):
            mixer.callback(out, 1024, None, 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # a 1024-frame stereo float32 buffer is 8 KiB; views and scalars are a few hundred bytes
    assert peak - before < 2048
