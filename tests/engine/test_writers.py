"""engine.writers: streaming, atomic WAV/FLAC/MP3 output, clip modes as demucs."""

from __future__ import annotations

import threading
import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from demucs.audio import prevent_clip

from engine import writers
from engine.errors import Cancelled, DemixerError, OutputExistsError
from engine.writers import (
    BLOCK_FRAMES,
    OutputFormat,
    export_rate,
    soundfile_container,
    write_audio,
)
from tests.engine.audio_files import sine_mix

RATE = 44100


def _read(path: Path) -> tuple[np.ndarray, int]:
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return data.T, rate


def _read_av(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name)


# ---------------------------------------------------------------- formats ----------------

@pytest.mark.parametrize(("container", "sample_format", "subtype", "step"), [
    ("wav", "int16", "PCM_16", 2.0**-15), ("wav", "int24", "PCM_24", 2.0**-23),
    ("wav", "float32", "FLOAT", 0.0), ("flac", "int16", "PCM_16", 2.0**-15),
    ("flac", "int24", "PCM_24", 2.0**-23),
])
def test_round_trip(tmp_path: Path, container: str, sample_format: str, subtype: str,
                    step: float) -> None:
    audio = sine_mix(3.5, RATE, amplitude=0.9)  # 3.5 s: more than two blocks
    fmt = OutputFormat(container, sample_format, clip_mode="none")  # type: ignore[arg-type]
    path = write_audio(tmp_path / f"stem.{fmt.ext}", [audio], RATE, fmt=fmt)
    info = sf.info(str(path))
    assert (info.format, info.subtype, info.samplerate) == (container.upper(), subtype, RATE)
    back, _ = _read(path)
    assert back.shape == audio.shape
    assert np.abs(back - audio).max() <= step / 2 + 1e-9  # rounded to the nearest step
    assert _leftovers(tmp_path) == []


def test_integer_formats_clip_instead_of_wrapping(tmp_path: Path) -> None:
    audio = np.array([[1.5, -1.5, 1.0, -1.0, 0.5]] * 2, np.float32)
    for sample_format, top in (("int16", 1 - 2.0**-15), ("int24", 1 - 2.0**-23)):
        fmt = OutputFormat(sample_format=sample_format, clip_mode="none")  # type: ignore[arg-type]
        back, _ = _read(write_audio(tmp_path / f"{sample_format}.wav", [audio], RATE, fmt=fmt))
        np.testing.assert_array_equal(back[0], np.array([top, -1.0, top, -1.0, 0.5], np.float32))


def test_float32_keeps_values_beyond_full_scale(tmp_path: Path) -> None:
    audio = sine_mix(0.5, RATE) * np.float32(5.0)
    fmt = OutputFormat(sample_format="float32", clip_mode="none")
    back, _ = _read(write_audio(tmp_path / "hot.wav", [audio], RATE, fmt=fmt))
    np.testing.assert_array_equal(back, audio)
    assert np.abs(back).max() > 2.0


# ---------------------------------------------------------------- clip modes ---------------

@pytest.mark.parametrize("mode", ["rescale", "clamp", "none"])
def test_clip_modes_match_demucs(tmp_path: Path, mode: str) -> None:
    audio = sine_mix(3.2, RATE, amplitude=1.0, seed=4) * np.float32(1.6)
    audio[1, -100] = -2.3  # the peak is in the last block: all earlier blocks must scale too
    want = prevent_clip(torch.from_numpy(audio), mode).numpy()
    fmt = OutputFormat(sample_format="float32", clip_mode=mode)  # type: ignore[arg-type]
    back, _ = _read(write_audio(tmp_path / "f.wav", [audio], RATE, fmt=fmt))
    np.testing.assert_array_equal(back, want)
    fmt16 = OutputFormat(sample_format="int16", clip_mode=mode)  # type: ignore[arg-type]
    back16, _ = _read(write_audio(tmp_path / "i.wav", [audio], RATE, fmt=fmt16))
    assert np.abs(back16 - np.clip(want, -1, 1 - 2.0**-15)).max() <= 2.0**-16


def test_rescale_leaves_quiet_audio_alone(tmp_path: Path) -> None:
    audio = sine_mix(0.5, RATE, amplitude=0.5)
    back, _ = _read(write_audio(tmp_path / "q.wav", [audio], RATE,
                                fmt=OutputFormat(sample_format="float32")))
    np.testing.assert_array_equal(back, audio)


def test_gains_sum_the_parts(tmp_path: Path) -> None:
    parts = [sine_mix(2.0, RATE, seed=s) for s in range(3)]
    gains = (0.5, -1.0, 2.0)
    want = np.float32(0.5) * parts[0] + np.float32(-1.0) * parts[1] + np.float32(2.0) * parts[2]
    fmt = OutputFormat(sample_format="float32", clip_mode="none")
    back, _ = _read(write_audio(tmp_path / "sum.wav", parts, RATE, fmt=fmt, gains=gains))
    np.testing.assert_allclose(back, want, atol=1e-6)
    default, _ = _read(write_audio(tmp_path / "ones.wav", parts[:2], RATE, fmt=fmt))
    np.testing.assert_allclose(default, parts[0] + parts[1], atol=1e-6)


# ---------------------------------------------------------------- rates and lengths --------

@pytest.mark.parametrize(("rate_out", "frames_out"), [
    (48000, None), (8000, None), (RATE, None), (48000, 100_000), (48000, 150_000),
    (22050, 12345),
])
def test_exact_length_with_resampling(tmp_path: Path, rate_out: int,
                                      frames_out: int | None) -> None:
    audio = sine_mix(2.6, RATE, seed=1)
    fmt = OutputFormat(sample_format="float32", clip_mode="none")
    path = write_audio(tmp_path / "r.wav", [audio], RATE, rate_out=rate_out,
                       frames_out=frames_out, fmt=fmt)
    back, rate = _read(path)
    expected = frames_out if frames_out is not None else round(audio.shape[1] * rate_out / RATE)
    assert rate == rate_out and back.shape == (2, expected)
    want = soxr.resample(np.ascontiguousarray(audio.T), RATE, rate_out, quality="HQ").T
    n = min(expected, want.shape[1])
    np.testing.assert_allclose(back[:, :n], want[:, :n], atol=1e-6)
    assert not back[:, n:].any()  # any padding is silence


def test_zero_length_parts(tmp_path: Path) -> None:
    empty = np.zeros((2, 0), np.float32)
    back, _ = _read(write_audio(tmp_path / "e.wav", [empty], RATE, frames_out=10))
    assert back.shape == (2, 10) and not back.any()


# ---------------------------------------------------------------- mp3 --------------------

@pytest.mark.parametrize(("rate_in", "rate_out", "channels"), [
    (RATE, RATE, 2), (RATE, 48000, 2), (RATE, 22050, 1), (16000, 16000, 2),
])
def test_mp3_is_gapless_and_exact(tmp_path: Path, rate_in: int, rate_out: int,
                                  channels: int) -> None:
    """The LAME tag we add lets FFmpeg and mpg123 drop LAME's delay and padding."""
    t = np.arange(round(1.3 * rate_in)) / rate_in
    tone = (0.4 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1234 * t))
    audio = np.tile(tone.astype(np.float32), (channels, 1))
    path = write_audio(tmp_path / "s.mp3", [audio], rate_in, rate_out=rate_out,
                       fmt=OutputFormat("mp3", clip_mode="none"))
    frames = round(audio.shape[1] * rate_out / rate_in)
    back, rate = _read(path)
    assert rate == rate_out and back.shape == (channels, frames)
    assert _read_av(path).shape == (channels, frames)
    want = 0.4 * np.sin(2 * np.pi * 440 * np.arange(frames) / rate_out) + \
        0.2 * np.sin(2 * np.pi * 1234 * np.arange(frames) / rate_out)
    assert np.abs(back[:, 600:-600] - want[600:-600]).max() < 0.05  # aligned to the sample


def test_mp3_bitrate(tmp_path: Path) -> None:
    audio = sine_mix(2.0, RATE)
    sizes = {}
    for kbps in (128, 320):
        path = write_audio(tmp_path / f"{kbps}.mp3", [audio], RATE,
                           fmt=OutputFormat("mp3", mp3_bitrate=kbps))
        sizes[kbps] = path.stat().st_size
        with av.open(str(path)) as container:
            assert container.streams.audio[0].bit_rate == kbps * 1000
    assert sizes[320] / sizes[128] == pytest.approx(2.5, rel=0.05)


# ---------------------------------------------------------------- validation -------------

@pytest.mark.parametrize(("fmt", "rate", "words"), [
    (OutputFormat("flac", "float32"), None, "FLAC cannot store float32"),
    (OutputFormat("mp3", mp3_bitrate=100), None, "bit rate 100"),
    (OutputFormat("mp3", "int24"), None, "16-bit"),
    (OutputFormat("mp3"), 96000, "96000 Hz"),
    (OutputFormat("ogg"), None, "Unknown output format"),  # type: ignore[arg-type]
    (OutputFormat(clip_mode="tanh"), None, "Unknown clip mode"),  # type: ignore[arg-type]
    (OutputFormat(sample_format="int8"), None, "Unknown sample format"),  # type: ignore[arg-type]
])
def test_impossible_formats(tmp_path: Path, fmt: OutputFormat, rate: int | None,
                            words: str) -> None:
    with pytest.raises(DemixerError, match=words):
        fmt.validate(rate)
    with pytest.raises(DemixerError, match=words):
        write_audio(tmp_path / "x.out", [sine_mix(0.1, RATE)], RATE, rate_out=rate, fmt=fmt)
    assert list(tmp_path.iterdir()) == []


def test_valid_formats_and_extensions() -> None:
    for fmt in (OutputFormat(), OutputFormat("flac", "int24"), OutputFormat("mp3", mp3_bitrate=8),
                OutputFormat("wav", "float32", clip_mode="none")):
        fmt.validate(48000)
    assert [OutputFormat(c).ext for c in ("wav", "flac", "mp3")] == ["wav", "flac", "mp3"]


def test_rate_for_mp3_picks_a_rate_lame_can_write() -> None:
    mp3, wav = OutputFormat("mp3"), OutputFormat("wav")
    cases = {96000: 48000, 88200: 44100, 176400: 44100, 192000: 48000, 64000: 48000,
             37800: 32000, 44100: 44100, 22050: 22050, 6000: 8000}
    assert {rate: mp3.rate_for(rate) for rate in cases} == cases
    assert all(wav.rate_for(rate) == rate for rate in cases)
    for rate in cases:
        mp3.validate(mp3.rate_for(rate))


def test_export_rate_is_one_rule_for_the_job_and_the_app() -> None:
    """A 96 kHz song exported to MP3 comes out at 48 kHz with its length halved, whether the
    CLI's job writes it or the app exports it (both call export_rate); WAV keeps 96 kHz."""
    from types import SimpleNamespace

    from app.export import output_rate

    source, model = (96000, 960_001), (44100, 441_000)
    assert export_rate(OutputFormat("mp3"), source, model) == (48000, 480_000)
    assert export_rate(OutputFormat("wav"), source, model) == (96000, 960_001)
    assert export_rate(OutputFormat("mp3"), (88200, 882_000), model) == (44100, 441_000)
    assert export_rate(OutputFormat("mp3"), source, model, keep_model_rate=True) == model
    track = SimpleNamespace(source_rate=96000, source_frames=960_001, samplerate=44100,
                            frames=441_000)
    for fmt in (OutputFormat("mp3"), OutputFormat("flac")):
        assert output_rate(track, fmt) == export_rate(fmt, source, model)  # type: ignore[arg-type]


def test_rf64_beyond_four_gigabytes() -> None:
    assert soundfile_container(OutputFormat(), 2, 60 * RATE) == "WAV"
    assert soundfile_container(OutputFormat(sample_format="float32"), 2, 4 * 3600 * 48000) \
        == "RF64"
    assert soundfile_container(OutputFormat("flac", "int24"), 2, 4 * 3600 * 48000) == "FLAC"


def test_bad_arguments(tmp_path: Path) -> None:
    a, b = np.zeros((2, 10), np.float32), np.zeros((2, 11), np.float32)
    with pytest.raises(ValueError, match="parts must all be"):
        write_audio(tmp_path / "x.wav", [a, b], RATE)
    with pytest.raises(ValueError, match="2 gains for 1 parts"):
        write_audio(tmp_path / "x.wav", [a], RATE, gains=[1.0, 2.0])
    with pytest.raises(DemixerError, match="MP3 files here hold 1 or 2 channels"):
        write_audio(tmp_path / "x.mp3", [np.zeros((4, 10), np.float32)], RATE,
                    fmt=OutputFormat("mp3"))


# ---------------------------------------------------------------- atomic writes -----------

def test_existing_file_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "vocals.wav"
    path.write_bytes(b"old stem")
    with pytest.raises(OutputExistsError) as info:
        write_audio(path, [sine_mix(0.3, RATE)], RATE)
    assert str(path) in str(info.value) and "--overwrite" in str(info.value)
    assert path.read_bytes() == b"old stem" and _leftovers(tmp_path) == []
    write_audio(path, [sine_mix(0.3, RATE)], RATE, overwrite=True)
    assert _read(path)[0].shape == (2, round(0.3 * RATE))


class _CancelAfter(threading.Event):
    """An Event that turns set after `checks` looks: cancels part way through a write."""

    def __init__(self, checks: int) -> None:
        super().__init__()
        self.checks = checks

    def is_set(self) -> bool:
        self.checks -= 1
        return self.checks < 0


@pytest.mark.parametrize(("fmt", "checks"), [
    (OutputFormat(), 0), (OutputFormat(), 4), (OutputFormat(clip_mode="clamp"), 2),
    (OutputFormat("mp3"), 4), (OutputFormat("flac"), 4),
])
def test_cancel_leaves_old_file_and_no_temp(tmp_path: Path, fmt: OutputFormat,
                                            checks: int) -> None:
    audio = sine_mix(4.0, RATE)  # three blocks per pass; rescale makes two passes
    path = tmp_path / f"new.{fmt.ext}"
    with pytest.raises(Cancelled):
        write_audio(path, [audio], RATE, fmt=fmt, cancel=_CancelAfter(checks))
    assert list(tmp_path.iterdir()) == []
    path.write_bytes(b"previous")
    with pytest.raises(Cancelled):
        write_audio(path, [audio], RATE, fmt=fmt, overwrite=True, cancel=_CancelAfter(checks))
    assert path.read_bytes() == b"previous" and _leftovers(tmp_path) == []


def test_failure_while_writing_leaves_nothing(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def broken_write(self: object, block: np.ndarray) -> None:
        calls.append(block.shape)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(writers._SoundfileEncoder, "write", broken_write)
    path = tmp_path / "drums.wav"
    with pytest.raises(DemixerError) as info:
        write_audio(path, [sine_mix(3.0, RATE)], RATE)
    assert str(info.value) == f"{path} cannot be written (the disk is full)."
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    path = tmp_path / "file" / "bass.wav"
    with pytest.raises(DemixerError, match=r"bass\.wav cannot be written"):
        write_audio(path, [sine_mix(0.1, RATE)], RATE)


def test_unicode_names_and_new_folders(tmp_path: Path) -> None:
    path = tmp_path / "new földer" / "sub dir" / "ünïcødé – 歌 (vocals).flac"
    audio = sine_mix(0.5, RATE)
    assert write_audio(path, [audio], RATE, fmt=OutputFormat("flac")) == path
    back, _ = _read(path)
    np.testing.assert_allclose(back, audio, atol=2.0**-15)
    assert _leftovers(path.parent) == []


# ---------------------------------------------------------------- memory ------------------

def test_streams_without_loading_the_song(tmp_path: Path) -> None:
    """A 40 s memmap stem (14 MB) written with a peak pass and resampling: numpy never holds
    more than a few blocks (tracemalloc sees numpy's allocations, not the memmap's pages)."""
    frames = 40 * RATE
    stem = np.lib.format.open_memmap(tmp_path / "stem.npy", "w+", np.float32, (2, frames))
    for start in range(0, frames, BLOCK_FRAMES):
        stop = min(start + BLOCK_FRAMES, frames)
        stem[:, start:stop] = np.sin(np.arange(start, stop) / 50.0) * 1.5
    stem.flush()
    stem = np.load(tmp_path / "stem.npy", mmap_mode="r")
    tracemalloc.start()
    try:
        write_audio(tmp_path / "out.wav", [stem, stem], RATE, rate_out=48000, gains=[0.5, 0.5])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 6 * 2**20, f"{peak / 2**20:.1f} MB"
    back, _ = _read(tmp_path / "out.wav")
    assert back.shape == (2, 40 * 48000) and 0.98 < np.abs(back).max() < 0.995


def test_a_full_disk_is_named_even_when_the_library_says_only_system_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """libsndfile reports a full disk as "System error"; the free space is judged while the
    failed temporary still holds its space (removing it can free more than the threshold)."""
    def broken_write(self: object, block: np.ndarray) -> None:
        raise sf.LibsndfileError(2, "System error")

    def full_while_a_temporary_is_there(folder: Path) -> bool:
        return any(p.name.startswith(".") for p in folder.iterdir())

    monkeypatch.setattr(writers._SoundfileEncoder, "write", broken_write)
    monkeypatch.setattr(writers, "_disk_nearly_full", full_while_a_temporary_is_there)
    path = tmp_path / "drums.wav"
    with pytest.raises(DemixerError) as info:
        write_audio(path, [sine_mix(3.0, RATE)], RATE)
    assert str(info.value) == f"{path} cannot be written (the disk is full)."
    assert list(tmp_path.iterdir()) == []
