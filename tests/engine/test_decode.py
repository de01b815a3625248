"""engine.decode: any file -> stereo float32 memmap at the model rate, streaming, clean errors."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from engine.decode import DecodedTrack, decode, find_audio_files, probe, to_stereo
from engine.errors import AudioDecodeError, Cancelled
from tests.engine.audio_files import (
    sine_mix,
    truncated_copy,
    write_long_wav,
    write_random_bytes,
    write_soundfile,
    write_text,
    write_wav,
    write_with_av,
)

RATE = 44100
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path / "work"


def _backing_file(audio: np.ndarray) -> Path:
    assert isinstance(audio, np.memmap) and audio.filename is not None
    return Path(audio.filename)


def _files(workdir: Path) -> list[str]:
    return sorted(p.name for p in workdir.iterdir()) if workdir.exists() else []


def _read_f32(path: Path) -> np.ndarray:
    """What soundfile reads as float32, channel-first."""
    data, _ = sf.read(str(path), dtype="float32", always_2d=True)
    return data.T


# ---------------------------------------------------------------- exactness ---------------

@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
def test_same_rate_is_bit_identical_to_soundfile(tmp_path: Path, workdir: Path,
                                                 subtype: str) -> None:
    path = write_wav(tmp_path / "song.wav", sine_mix(2.5, RATE), RATE, subtype)
    track = decode(path, RATE, workdir)
    assert isinstance(track.audio, np.memmap) and track.audio.dtype == np.float32
    assert track.audio.shape == (2, round(2.5 * RATE))
    assert (track.source_rate, track.source_channels, track.source_frames) == (RATE, 2,
                                                                               round(2.5 * RATE))
    assert _backing_file(track.audio).parent == workdir
    np.testing.assert_array_equal(track.audio, _read_f32(path))
    with pytest.raises(ValueError):  # read-only: the decoded song cannot be changed by mistake
        track.audio[0, 0] = 1.0


def test_mono_is_duplicated_to_both_channels(tmp_path: Path, workdir: Path) -> None:
    path = write_wav(tmp_path / "mono.wav", sine_mix(1.0, RATE, channels=1), RATE)
    track = decode(path, RATE, workdir)
    assert track.source_channels == 1
    mono = _read_f32(path)[0]
    np.testing.assert_array_equal(track.audio, np.stack([mono, mono]))


@pytest.mark.parametrize(("rate", "channels", "seconds"), [
    (48000, 2, 2.3), (8000, 1, 1.7), (22050, 2, 0.4), (96000, 8, 1.1), (11025, 3, 0.9),
])
def test_resampled_length_and_values(tmp_path: Path, workdir: Path, rate: int, channels: int,
                                     seconds: float) -> None:
    path = write_wav(tmp_path / "in.wav", sine_mix(seconds, rate, channels), rate, "FLOAT")
    track = decode(path, RATE, workdir)
    frames = round(seconds * rate)
    assert track.source_frames == frames and track.source_rate == rate
    assert track.audio.shape == (2, round(frames * RATE / rate))
    # Streaming soxr equals one-shot soxr on the whole (downmixed) signal.
    want = soxr.resample(np.ascontiguousarray(to_stereo(_read_f32(path)).T), rate, RATE,
                         quality="HQ").T
    n = min(want.shape[1], track.audio.shape[1])
    np.testing.assert_allclose(track.audio[:, :n], want[:, :n], atol=1e-6)


def test_resampling_keeps_the_music(tmp_path: Path, workdir: Path) -> None:
    """A 1 kHz tone at 48 kHz is still a 1 kHz tone of the same level at 44.1 kHz."""
    t = np.arange(48000) / 48000
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    path = write_wav(tmp_path / "tone.wav", np.stack([tone, tone]), 48000, "FLOAT")
    audio = np.asarray(decode(path, RATE, workdir).audio)
    want = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(RATE) / RATE)
    np.testing.assert_allclose(audio[:, 100:-100], np.stack([want, want])[:, 100:-100],
                               atol=1e-3)


def test_surround_downmix_itu(tmp_path: Path, workdir: Path) -> None:
    """5.1 and 7.1 (L R C LFE Ls Rs [Lb Rb]): LFE dropped, centre and surrounds at 0.7071."""
    for channels in (6, 8):
        audio = sine_mix(0.5, 96000, channels, seed=channels)
        path = write_wav(tmp_path / f"s{channels}.wav", audio, 96000, "FLOAT")
        track = decode(path, 96000, workdir)
        x = audio.astype(np.float64)
        left = x[0] + 0.7071 * (x[2] + x[4] + (x[6] if channels == 8 else 0))
        right = x[1] + 0.7071 * (x[2] + x[5] + (x[7] if channels == 8 else 0))
        np.testing.assert_allclose(track.audio, np.stack([left, right]), atol=1e-6)
        assert track.source_channels == channels


def test_other_channel_counts_average_pairs() -> None:
    a, b, c, d = (np.full((1, 4), v, np.float32) for v in (0.1, 0.2, 0.4, 0.8))
    np.testing.assert_allclose(to_stereo(np.vstack([a, b, c, d])),  # quad: FL FR BL BR
                               [[0.25] * 4, [0.5] * 4], rtol=1e-6)
    np.testing.assert_allclose(to_stereo(np.vstack([a, b, c])),  # 3.0: centre to both
                               [[0.25] * 4, [0.3] * 4], rtol=1e-6)


# ---------------------------------------------------------------- normalisation stats -----

def _torch_stats(audio: np.ndarray) -> tuple[float, float]:
    ref = torch.from_numpy(np.array(audio, np.float64)).mean(0)
    return float(ref.mean()), float(ref.std())


@pytest.mark.parametrize(("rate", "frames", "tail"), [
    (RATE, 57330, 0), (48000, 62400, 0),
    (8000, 17640, +1),  # soxr gives one frame too many: trimmed, and taken out of the stats
    (96000, 14240, -1),  # one too few: padded with a zero, which counts in the stats
])
def test_mean_and_std_of_the_mono_mix(tmp_path: Path, workdir: Path, rate: int, frames: int,
                                      tail: int) -> None:
    """Exact over the final audio, ddof=1 as torch's .std(), whatever the tail fix-up."""
    audio = sine_mix(frames / rate, rate, seed=3) + np.float32(0.25)  # with a DC offset
    path = write_wav(tmp_path / "dc.wav", audio, rate, "FLOAT")
    track = decode(path, RATE, workdir)
    target = round(frames * RATE / rate)
    one_shot = soxr.resample(np.zeros((frames, 2), np.float32), rate, RATE, quality="HQ")
    assert (track.audio.shape[1], len(one_shot) - target) == (target, tail)
    mean, std = _torch_stats(track.audio)
    assert track.mean == pytest.approx(mean, rel=1e-9)
    assert track.std == pytest.approx(std, rel=1e-9)
    assert track.mean == pytest.approx(0.25, abs=0.01)


def test_silence_has_zero_std(tmp_path: Path, workdir: Path) -> None:
    path = write_wav(tmp_path / "silence.wav", np.zeros((2, 20000), np.float32), RATE)
    track = decode(path, RATE, workdir)
    assert (track.mean, track.std) == (0.0, 0.0)
    assert not np.asarray(track.audio).any()


def test_samples_beyond_full_scale_are_not_clipped(tmp_path: Path, workdir: Path) -> None:
    audio = sine_mix(0.5, RATE) * np.float32(8.0)
    audio[0, 100], audio[1, 200] = 3.5, -4.25
    path = write_wav(tmp_path / "hot.wav", audio, RATE, "FLOAT")
    track = decode(path, RATE, workdir)
    np.testing.assert_array_equal(track.audio, audio)
    assert (track.audio[0, 100], track.audio[1, 200]) == (3.5, -4.25)


# ---------------------------------------------------------------- formats ----------------

@pytest.mark.parametrize("name", ["a.flac", "a.aiff", "a.ogg", "a.mp3"])
def test_libsndfile_formats(tmp_path: Path, workdir: Path, name: str) -> None:
    audio = sine_mix(1.5, RATE)
    path = write_soundfile(tmp_path / name, audio, RATE)
    track = decode(path, RATE, workdir)
    np.testing.assert_array_equal(track.audio, _read_f32(path))  # what libsndfile reads
    assert abs(track.audio.shape[1] - audio.shape[1]) < 0.05 * RATE
    if name in ("a.flac", "a.aiff"):  # lossless at 16 bits
        np.testing.assert_allclose(track.audio, audio, atol=1 / 32768)


@pytest.mark.parametrize(("name", "codec", "rate", "tol"), [
    ("a.m4a", "aac", RATE, 0.05 * RATE), ("a.wma", "wmav2", RATE, 0.05 * RATE),
    ("a.opus", "libopus", 48000, 0.05 * RATE), ("a b.mp3", "libmp3lame", 32000, 0),
])
def test_ffmpeg_formats(tmp_path: Path, workdir: Path, name: str, codec: str, rate: int,
                        tol: float) -> None:
    audio = sine_mix(1.5, rate)
    path = write_with_av(tmp_path / name, audio, rate, codec)
    track = decode(path, RATE, workdir)
    assert track.source_rate == rate and track.source_channels == 2
    assert abs(track.audio.shape[1] - round(1.5 * RATE)) <= tol
    assert track.audio.shape[1] == round(track.source_frames * RATE / rate)
    assert 0.3 < float(np.abs(track.audio).max()) < 0.7  # the music, at its level


@pytest.mark.parametrize(("sample_format", "subtype"), [("s16p", "PCM_16"), ("s32p", "PCM_24")])
def test_alac_is_lossless_and_scaled_like_libsndfile(tmp_path: Path, workdir: Path,
                                                     sample_format: str, subtype: str) -> None:
    """FFmpeg's integer samples are scaled exactly as libsndfile scales the same PCM."""
    audio = sine_mix(1.2, RATE, seed=7)
    wav = write_wav(tmp_path / "a.wav", audio, RATE, subtype)
    m4a = write_with_av(tmp_path / "a.m4a", _read_f32(wav), RATE, "alac",
                        sample_format=sample_format)
    np.testing.assert_array_equal(decode(m4a, RATE, workdir).audio,
                                  decode(wav, RATE, workdir).audio)


def test_surround_m4a_through_ffmpeg(tmp_path: Path, workdir: Path) -> None:
    path = write_with_av(tmp_path / "5.1.m4a", sine_mix(1.0, 48000, 6), 48000, "aac")
    track = decode(path, RATE, workdir)
    assert (track.source_channels, track.audio.shape[0]) == (6, 2)
    assert track.audio.shape[1] == round(track.source_frames * RATE / 48000)


@pytest.mark.parametrize("name", ["ünïcødé sông – 歌.wav", "with  spaces & 'quotes'.m4a"])
def test_unicode_and_spaces_in_names(tmp_path: Path, name: str) -> None:
    audio = sine_mix(0.6, RATE)
    folder = tmp_path / "dössier with space"
    folder.mkdir()
    if name.endswith(".wav"):
        path = write_wav(folder / name, audio, RATE)
    else:
        path = write_with_av(folder / name, audio, RATE, "alac")
    track = decode(path, RATE, folder / "wörk dir")
    assert track.audio.shape == (2, audio.shape[1])
    assert probe(path)[:2] == (RATE, 2)


def test_short_file(tmp_path: Path, workdir: Path) -> None:
    path = write_wav(tmp_path / "short.wav", sine_mix(0.4, 48000), 48000)
    assert decode(path, RATE, workdir).audio.shape == (2, round(0.4 * RATE))


def test_probe(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "a.wav", sine_mix(0.5, 22050, 3), 22050)
    assert probe(wav) == (22050, 3, 11025)
    rate, channels, frames = probe(write_with_av(tmp_path / "a.m4a", sine_mix(0.5, RATE), RATE))
    assert (rate, channels) == (RATE, 2)
    assert frames is not None and abs(frames - RATE // 2) < 2048  # an estimate from duration
    with pytest.raises(AudioDecodeError, match="is not an audio file"):
        probe(write_text(tmp_path / "t.wav"))


# ---------------------------------------------------------------- bad input -------------

def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _assert_one_sentence(err: AudioDecodeError, path: Path, *reasons: str) -> None:
    message = str(err)
    assert message.startswith(f"{path}: ") and message.endswith(".")
    assert any(reason in message for reason in reasons), message
    assert "\n" not in message and "Traceback" not in message


@pytest.mark.parametrize(("make", "reason"), [
    (lambda d: d / "missing.wav", "does not exist"),
    (lambda d: _fifo(d / "pipe.wav"), "is not a regular file"),
    (lambda d: Path("/dev/urandom"), "is not a regular file"),
    (lambda d: (d / "folder.wav").mkdir() or d / "folder.wav", "is a folder"),
    (lambda d: (d / "empty.wav").touch() or d / "empty.wav", "is empty (0 bytes)"),
    (lambda d: write_text(d / "text.wav"), "is not an audio file that can be read"),
    (lambda d: write_text(d / "text.mp3"), "is not an audio file that can be read"),
    (lambda d: write_random_bytes(d / "noise.wav"), "is not an audio file that can be read"),
    (lambda d: write_random_bytes(d / "noise.m4a", seed=1), "is not an audio file"),
    (lambda d: write_wav(d / "none.wav", np.zeros((2, 0), np.float32), RATE),
     "contains no audio"),
])
def test_bad_input_is_one_clear_sentence(tmp_path: Path, workdir: Path, make: object,
                                         reason: str) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(AudioDecodeError) as info:
        decode(path, RATE, workdir)
    _assert_one_sentence(info.value, path, reason)
    assert _files(workdir) == []


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_samples(tmp_path: Path, workdir: Path, bad: float) -> None:
    audio = sine_mix(2.5, RATE)
    audio[1, 2 * RATE + 5] = bad  # in the third block: earlier blocks are on disk already
    path = write_wav(tmp_path / "bad.wav", audio, RATE, "FLOAT")
    with pytest.raises(AudioDecodeError) as info:
        decode(path, RATE, workdir)
    _assert_one_sentence(info.value, path, "contains NaN or infinite samples")
    assert _files(workdir) == []


def test_truncated_mp3_is_damaged_naming_both_durations(tmp_path: Path, workdir: Path) -> None:
    """Its Info tag says 3.0 s; half of it decodes. Separating the half silently would give
    short stems (issue 12): it is an error, and nothing is left behind."""
    full = write_with_av(tmp_path / "full.mp3", sine_mix(3.0, RATE), RATE, "libmp3lame")
    half = truncated_copy(full, tmp_path / "half.mp3", 0.5)
    with pytest.raises(AudioDecodeError) as info:
        decode(half, RATE, workdir)
    _assert_one_sentence(info.value, half, "is damaged or cut short: its header says 3.0 s "
                                           "but only 1.5 s of audio could be decoded")
    stub = truncated_copy(full, tmp_path / "stub.mp3", 0.005)
    with pytest.raises(AudioDecodeError) as info:
        decode(stub, RATE, workdir)
    _assert_one_sentence(info.value, stub, "is not an audio file", "contains no audio",
                         "is damaged")
    assert _files(workdir) == []


def test_our_own_mp3_cut_short_is_damaged(tmp_path: Path, workdir: Path) -> None:
    """The issue's case: an MP3 declaring 12.0 s that decodes 1.3 s (our writer's LAME tag)."""
    from engine.writers import OutputFormat, write_audio

    full = write_audio(tmp_path / "full.mp3", [sine_mix(12.0, RATE)], RATE,
                       fmt=OutputFormat(container="mp3"))
    cut = truncated_copy(full, tmp_path / "cut.mp3", 0.11)
    with pytest.raises(AudioDecodeError) as info:
        decode(cut, RATE, workdir)
    assert str(info.value) == (f"{cut}: is damaged or cut short: its header says 12.0 s but "
                               "only 1.3 s of audio could be decoded.")


def test_truncated_flac_is_damaged(tmp_path: Path, workdir: Path) -> None:
    """libsndfile gives up on a cut FLAC ("lost sync"); FFmpeg decodes what is there, which
    is short of STREAMINFO's length: an error, nothing left behind."""
    full = write_soundfile(tmp_path / "full.flac", sine_mix(3.0, RATE), RATE)
    cut = truncated_copy(full, tmp_path / "cut.flac", 0.6)
    with pytest.raises(sf.LibsndfileError):
        sf.read(str(cut))
    with pytest.raises(AudioDecodeError) as info:
        decode(cut, RATE, workdir)
    _assert_one_sentence(info.value, cut, "is damaged or cut short: its header says 3.0 s")
    assert _files(workdir) == []


def test_a_damaged_flac_frame_keeps_the_timeline(tmp_path: Path, workdir: Path) -> None:
    """FFmpeg drops the frame it cannot decode (4,096 samples); the gap is filled with
    silence, so everything after it stays where it belongs instead of arriving 93 ms early."""
    audio = sine_mix(12.0, RATE)
    full = write_soundfile(tmp_path / "full.flac", audio, RATE)
    data = bytearray(full.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 200] = bytes(b ^ 0x5A for b in data[middle:middle + 200])
    damaged = tmp_path / "damaged.flac"
    damaged.write_bytes(bytes(data))
    want = decode(full, RATE, workdir).audio
    got = decode(damaged, RATE, workdir).audio
    assert got.shape == want.shape
    wrong = np.nonzero(np.abs(got - want).max(axis=0) > 0)[0]
    assert 0 < len(wrong) <= 2 * 4096  # the lost frame(s), silent now
    assert np.all(got[:, wrong] == 0.0)
    np.testing.assert_array_equal(got[:, wrong.max() + 1:], want[:, wrong.max() + 1:])


# ---------------------------------------------------------------- cancel, progress -------

def test_progress_rises_to_one(tmp_path: Path, workdir: Path) -> None:
    path = write_wav(tmp_path / "a.wav", sine_mix(3.5, 48000), 48000)
    seen: list[float] = []
    decode(path, RATE, workdir, progress=seen.append)
    assert len(seen) >= 4 and seen == sorted(seen)
    assert seen[-1] == 1.0 and 0 < seen[0] < 0.5


@pytest.mark.parametrize("name", ["a.wav", "a.m4a"])
def test_cancel_leaves_nothing(tmp_path: Path, workdir: Path, name: str) -> None:
    audio = sine_mix(3.0, RATE)
    path = (write_wav(tmp_path / name, audio, RATE) if name.endswith(".wav")
            else write_with_av(tmp_path / name, audio, RATE, "aac"))
    cancel = threading.Event()
    with pytest.raises(Cancelled):  # set from the progress callback, after the first block
        decode(path, RATE, workdir, cancel=cancel, progress=lambda f: cancel.set())
    assert workdir.exists() and _files(workdir) == []
    with pytest.raises(Cancelled):  # set before starting
        decode(path, RATE, workdir, cancel=cancel)
    assert _files(workdir) == []


def test_close_drops_the_memmap(tmp_path: Path, workdir: Path) -> None:
    track = decode(write_wav(tmp_path / "a.wav", sine_mix(0.5, RATE), RATE), RATE, workdir)
    file = _backing_file(track.audio)
    track.close()
    assert isinstance(track, DecodedTrack) and track.audio.shape == (2, 0)
    file.unlink()  # the workdir owner deletes it
    assert _files(workdir) == []


# ---------------------------------------------------------------- memory -----------------

# Peak RSS from /proc: VmHWM belongs to this process image. (ru_maxrss would not do: Linux
# carries the forking pytest's high-water mark over exec into the child.)
_MEASURE = """
import sys
from pathlib import Path
from engine.decode import decode

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

src, warm, work = map(Path, sys.argv[1:])
decode(warm, 44100, work).close()  # libraries loaded, soxr and FFmpeg warmed up
try:
    open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
except OSError:
    pass  # then VmHWM includes the imports' peak: the check only gets stricter
base = status("VmRSS")
track = decode(src, 44100, work)
print(track.audio.shape[1], status("VmHWM") - base)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_memory_does_not_grow_with_length(tmp_path: Path, workdir: Path) -> None:
    """A 3-minute song (63 MB as float32 at 44.1 kHz) decodes, with resampling, in a few MB."""
    song = write_long_wav(tmp_path / "long.wav", 180.0, 48000)
    warm = write_wav(tmp_path / "warm.wav", sine_mix(2.5, 48000), 48000)
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(song), str(warm), str(workdir)],
                         cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    frames, growth = map(int, out.stdout.split())
    assert frames == 180 * RATE
    assert growth < 25 * 2**20, f"peak RSS grew by {growth / 2**20:.1f} MB"


def test_dropped_folders_are_searched_for_audio(tmp_path: Path) -> None:
    album = tmp_path / "Album"
    (album / "Disc 2").mkdir(parents=True)
    (album / ".git").mkdir()
    for name in ("02 b.flac", "01 a.wav", "cover.jpg", "notes.txt", ".hidden.wav",
                 "Disc 2/03 c.MP3", ".git/x.wav"):
        (album / name).write_bytes(b"")
    loose = tmp_path / "loose.txt"  # a file dropped by itself is tried whatever its name
    found = find_audio_files([album, loose])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "Album/01 a.wav", "Album/02 b.flac", "Album/Disc 2/03 c.MP3", "loose.txt"]


_QUIET = """
import sys
from pathlib import Path
from engine.decode import decode, probe
from engine.errors import AudioDecodeError
for call in (lambda p: probe(p), lambda p: decode(p, 44100, Path(sys.argv[2]))):
    try:
        call(Path(sys.argv[1]))
    except AudioDecodeError as err:
        print(err, file=sys.stderr)
print("stderr still works", file=sys.stderr)
"""


def test_a_fake_mp3_gives_our_sentence_and_no_decoder_chatter(tmp_path: Path,
                                                              workdir: Path) -> None:
    """libsndfile's MP3 decoder writes "Note: Illegal Audio-MPEG-Header ..." straight to fd 2
    while it sniffs a file that is not MP3; the user should see only Demixer's sentence."""
    fake = write_text(tmp_path / "fake.mp3", "garbage\n")
    out = subprocess.run([sys.executable, "-c", _QUIET, str(fake), str(workdir)], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=True)
    lines = out.stderr.splitlines()
    assert len(lines) == 3 and "Note:" not in out.stderr, out.stderr
    assert all(str(fake) in line and "is not an audio file" in line for line in lines[:2])
    assert lines[2] == "stderr still works"
