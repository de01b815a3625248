"""Practice tools in the mixer: A–B loop seam, speed and pitch, changes while playing.

The mixer is driven as PortAudio and the feeder would drive it: fill_step, then callbacks
with a fake `outdata`, 512 frames at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.mixer import Mixer
from app.practice import Loop, Practice, make_loop
from app.stretch import Rate, stretch_audio
from app.track import TrackAudio
from tests.app.helpers import RATE, growing_track

SECONDS = 6
BLOCK = 512


def tone(hz: float, frames: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(frames) / RATE
    return np.repeat((amp * np.sin(2 * np.pi * hz * t))[None], 2, axis=0).astype(np.float32)


def peak_hz(x: np.ndarray) -> float:
    """The strongest frequency of x (n,) by an FFT peak with parabolic interpolation."""
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    k = int(np.argmax(spec[1:-1])) + 1
    a, b, c = np.log(spec[k - 1:k + 2] + 1e-12)
    return float((k + 0.5 * (a - c) / (a - 2 * b + c)) * RATE / len(x))


@pytest.fixture
def tone_track(tmp_path: Path) -> Iterator[TrackAudio]:
    """Lane 0 a 440 Hz tone, the others silent (lane 4, the original, is muted in play())."""
    n = SECONDS * RATE
    silent = np.zeros((2, n), np.float32)
    track, _ = growing_track(tmp_path, {"drums": tone(440, n), "bass": silent,
                                        "other": silent, "vocals": silent}, ready=n)
    yield track
    track.close()


def play(mixer: Mixer, frames: int) -> tuple[np.ndarray, list[int]]:
    """Play `frames` output frames; the output (frames,) of channel 0 and the playhead after
    each callback."""
    outs, heads = [], []
    for _ in range(frames // BLOCK):
        while mixer.fill_step():
            pass
        out = np.full((BLOCK, 2), np.nan, np.float32)
        mixer.callback(out, BLOCK, None, 0)
        outs.append(out[:, 0].copy())
        heads.append(mixer.position)
    return np.concatenate(outs), heads


def wraps(heads: list[int]) -> int:
    """How many times the playhead went back (round the loop)."""
    return int(np.sum(np.diff(heads) < 0))


def started(track: TrackAudio, practice: Practice, at: int = 0) -> Mixer:
    mixer = Mixer()
    mixer.load(track, [1.0, 1.0, 1.0, 1.0, 0.0])
    mixer.set_practice(practice)
    mixer.seek(at)
    mixer.play()
    play(mixer, 2048)  # past the 10 ms fade-in
    return mixer


def test_loop_plays_a_to_b_again_and_again_without_a_click(tone_track: TrackAudio) -> None:
    # B - A is not a whole number of periods: a hard jump would step by up to 2 × 0.5.
    loop = Loop(int(1.0 * RATE) + 37, int(1.5 * RATE))
    mixer = started(tone_track, Practice(loop=loop), at=loop.a)
    out, heads = play(mixer, 3 * RATE)  # six passes through the loop
    assert all(loop.a <= h < loop.b for h in heads)
    assert wraps(heads) >= 5  # it went round
    # A 440 Hz tone at 0.5 moves at most 0.031 per sample; the seam stays near that.
    assert np.abs(np.diff(out)).max() < 0.045
    assert np.isfinite(out).all() and np.abs(out).max() <= 0.51


def test_hard_jump_would_have_clicked(tone_track: TrackAudio) -> None:
    """The bound above can fail: the same loop without its crossfade steps far above it."""
    a, b = int(1.0 * RATE) + 37, int(1.5 * RATE)
    x = tone(440, SECONDS * RATE)[0]
    assert abs(x[b - 1] - x[a]) > 0.045 * 3


def test_make_loop_orders_and_clamps_marks() -> None:
    assert make_loop(5000, 1000, 100_000) == Loop(1000, 5000)
    assert make_loop(90_000, 200_000, 100_000) == Loop(90_000, 100_000)
    assert make_loop(1000, 1100, 100_000) is None  # shorter than four seams


def test_stretch_audio_pitch_and_length_on_a_tone() -> None:
    x = tone(440, 3 * RATE).T.copy()
    up = stretch_audio(x, RATE, Rate(1.0, 2.0))
    assert up.shape == x.shape
    assert abs(peak_hz(up[RATE:2 * RATE, 0]) - 493.88) < 1.0
    slow = stretch_audio(x, RATE, Rate(0.8, 0.0))
    assert slow.shape[0] == round(x.shape[0] * 1.25)
    assert abs(peak_hz(slow[RATE:2 * RATE, 0]) - 440.0) < 1.0


def test_mixer_transposes_up_two_semitones_keeping_the_tempo(tone_track: TrackAudio) -> None:
    mixer = started(tone_track, Practice(rate=Rate(1.0, 2.0)))
    out, heads = play(mixer, 2 * RATE)
    assert abs(peak_hz(out[RATE // 2:]) - 493.88) < 1.0
    assert abs(heads[-1] - (2 * RATE + 2048)) < 0.02 * RATE  # the playhead keeps time


def test_mixer_at_80_percent_takes_1_25_times_as_long(tone_track: TrackAudio) -> None:
    mixer = started(tone_track, Practice(rate=Rate(0.8, 0.0)))
    h0 = mixer.position
    out, heads = play(mixer, 4 * RATE)
    assert (4 * RATE) / (heads[-1] - h0) == pytest.approx(1.25, rel=0.02)
    assert abs(peak_hz(out[RATE:]) - 440.0) < 1.0
    assert np.abs(out[RATE // 4:]).min() < 0.05 and np.abs(out).max() > 0.4


def moving_rms(x: np.ndarray, win: int = 441) -> np.ndarray:
    return np.sqrt(np.convolve(x * x, np.ones(win) / win, mode="valid"))


def test_change_while_playing_is_heard_within_100_ms_without_a_gap(
        tone_track: TrackAudio) -> None:
    mixer = started(tone_track, Practice())
    play(mixer, RATE // 2)
    mixer.set_practice(Practice(rate=Rate(0.8, 2.0)))
    out, _ = play(mixer, RATE)
    assert moving_rms(out).min() > 0.2  # a 0.5 tone's RMS is 0.35: never a gap
    after = int(0.1 * RATE)
    assert abs(peak_hz(out[after:after + 8192]) - 493.88) < 2.0
    mixer.set_practice(Practice())  # and back to the recording
    back, _ = play(mixer, RATE // 2)
    assert moving_rms(back).min() > 0.2
    assert abs(peak_hz(back[after:]) - 440.0) < 1.0
    # NB: a change puts back at most FLUSH_FRAMES: the playhead does not jump
    assert np.abs(np.diff(np.concatenate([out, back]))).max() < 0.1


def test_loop_with_speed_and_pitch_stays_in_the_loop(tone_track: TrackAudio) -> None:
    loop = Loop(RATE, 2 * RATE)
    mixer = started(tone_track, Practice(loop=loop, rate=Rate(0.7, -3.0)), at=loop.a)
    out, heads = play(mixer, 3 * RATE)
    assert all(loop.a - 0.05 * RATE <= h < loop.b for h in heads)
    assert wraps(heads) >= 1
    assert moving_rms(out).min() > 0.2
    assert abs(peak_hz(out[RATE // 4:]) - 440 * 2 ** (-3 / 12)) < 1.5


def test_export_applies_the_practice_speed_and_pitch(tone_track: TrackAudio,
                                                     tmp_path: Path) -> None:
    import soundfile as sf

    from app.export import at_rate, plan_mix, write_file
    from engine.writers import OutputFormat

    fmt = OutputFormat()
    mix = plan_mix(tone_track, [1.0, 1.0, 1.0, 1.0, 0.0], tmp_path, fmt)
    assert mix is not None
    (file,) = at_rate([mix], Rate(0.8, 2.0))
    assert file.path.name == "growing (full mix) (80 %, +2 st).wav"
    audio, rate = sf.read(write_file(tone_track, file, fmt), dtype="float32")
    assert rate == RATE and audio.shape[0] == round(SECONDS * RATE * 1.25)
    assert abs(peak_hz(audio[RATE:3 * RATE, 0]) - 493.88) < 1.0
    assert at_rate([mix], Rate()) == [mix]  # at 100 %, 0 st the file is the plain mix


def test_stretched_playback_reaches_the_end_and_a_change_after_a_seek_back_is_heard(
        tone_track: TrackAudio) -> None:
    frames = SECONDS * RATE
    mixer = started(tone_track, Practice(rate=Rate(0.8, 0.0)), at=frames - RATE // 2)
    out, heads = play(mixer, RATE)
    assert heads[-1] == frames  # the window sees the end (and stops there)
    assert np.abs(out[-2048:]).max() == 0.0
    mixer.seek(RATE)  # back to 1 s, then transpose: heard within 100 ms of the change
    play(mixer, RATE // 4)
    mixer.set_practice(Practice(rate=Rate(0.8, 2.0)))
    out, _ = play(mixer, RATE // 2)
    after = int(0.1 * RATE)
    assert abs(peak_hz(out[after:after + 8192]) - 493.88) < 2.0


def test_only_audible_lanes_are_stretched_and_a_lane_unmuted_is_heard_soon(
        tone_track: TrackAudio) -> None:
    mixer = Mixer()
    mixer.load(tone_track, [0.0, 1.0, 1.0, 1.0, 0.0])  # the tone (lane 0) muted
    mixer.set_practice(Practice(rate=Rate(0.8, 2.0)))
    mixer.play()
    out, _ = play(mixer, RATE // 2)
    session = mixer._session
    assert session is not None and session.shaper._stretch is not None
    assert session.shaper._stretch.active == [1, 2, 3]  # the muted lanes cost nothing
    assert np.abs(out).max() == 0.0
    mixer.set_gains([0.0, 0.0, 0.0, 0.0, 1.0])  # the original mix (the tone) alone
    out, _ = play(mixer, RATE // 2)
    assert session.shaper._stretch.active == [4]
    after = int(0.1 * RATE)
    assert moving_rms(out[after:]).min() > 0.2
    assert abs(peak_hz(out[after:after + 8192]) - 493.88) < 2.0
