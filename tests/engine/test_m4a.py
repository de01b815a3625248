"""AAC and ALAC `.m4a` (engine.m4a through engine.writers): exact length and rate, decoded back
with PyAV and with engine.decode; ALAC bit-exact, AAC within a stated SNR bound."""

from __future__ import annotations

import threading
from pathlib import Path

import av
import numpy as np
import pytest

from engine.decode import decode
from engine.errors import Cancelled, DemixerError
from engine.writers import OutputFormat, write_audio
from tests.engine.audio_files import sine_mix

# AAC is perceptual, so its error is not small in SNR terms: FFmpeg's encoder at 256 kbit/s
# measured 26-45 dB on these test signals (sines + noise); 20 dB catches a shift by one sample
# (about 9 dB) or a wrong gain, while leaving room for the encoder's version.
AAC_MIN_SNR_DB = 20.0


def _decoded(path: Path, index: int = 0) -> tuple[np.ndarray, int, int]:
    """(C, n) samples as PyAV decodes them (FFmpeg drops the AAC priming itself), the rate,
    and the track's declared length in samples (the edit list's duration)."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[index]
        frames = [f.to_ndarray() for f in container.decode(stream)]
        assert stream.duration is not None and stream.time_base is not None
        declared = round(stream.duration * stream.time_base * stream.rate)
        return np.concatenate(frames, axis=1), stream.rate, declared


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2)
                               / np.sum((test.astype(np.float64) - reference) ** 2)))


@pytest.mark.parametrize(("rate", "frames"), [(44100, 100_003), (48000, 48_000 * 2 + 7),
                                              (22050, 30_001)])
def test_aac_exact_length_rate_and_snr(tmp_path: Path, rate: int, frames: int) -> None:
    audio = sine_mix(frames / rate, rate)
    path = write_audio(tmp_path / "vocals.m4a", [audio], rate, fmt=OutputFormat("aac"))
    samples, back_rate, declared = _decoded(path)
    assert back_rate == rate and declared == frames
    # The rule: FFmpeg skips the 1024 priming samples; the last frame's padding (< 1024) is
    # cut at the declared length. What is left lines up with the input sample for sample.
    assert 0 <= samples.shape[1] - frames < 1024
    assert snr_db(audio, samples[:, :frames]) > AAC_MIN_SNR_DB
    track = decode(path, rate, tmp_path / "work")
    assert track.audio.shape == (2, frames) and track.source_rate == rate
    track.close()


def test_aac_bit_rate_is_the_one_asked(tmp_path: Path) -> None:
    audio = sine_mix(6.0, 44100, seed=3)
    sizes = {}
    for kbps in (128, 256):
        path = write_audio(tmp_path / f"{kbps}.m4a", [audio], 44100,
                           fmt=OutputFormat("aac", aac_bitrate=kbps))
        sizes[kbps] = path.stat().st_size * 8 / 6.0 / 1000
    assert 100 < sizes[128] < 150 and 200 < sizes[256] < 290  # kbit/s, container included


@pytest.mark.parametrize(("sample_format", "bits"), [("int16", 16), ("int24", 24)])
@pytest.mark.parametrize("rate", [44100, 96000])
def test_alac_is_bit_exact(tmp_path: Path, sample_format: str, bits: int, rate: int) -> None:
    frames = rate + 4097  # not a multiple of ALAC's 4096-sample packets
    audio = sine_mix(frames / rate, rate, amplitude=0.9)
    path = write_audio(tmp_path / "bass.m4a", [audio], rate,
                       fmt=OutputFormat("alac", sample_format))  # type: ignore[arg-type]
    samples, back_rate, declared = _decoded(path)
    full = 2.0 ** (bits - 1)
    expected = np.clip(np.rint(audio.astype(np.float64) * full), -full, full - 1)
    if bits == 24:
        assert samples.dtype == np.int32
        samples = samples >> 8  # s32p: the 24 bits in the top of each int32
    assert back_rate == rate and declared == frames and samples.shape == (2, frames)
    np.testing.assert_array_equal(samples, expected)


def test_aac_above_48k_is_written_at_48k(tmp_path: Path) -> None:
    fmt = OutputFormat("aac")
    assert (fmt.rate_for(96000), fmt.rate_for(88200), OutputFormat("alac").rate_for(96000)) \
        == (48000, 44100, 96000)
    with pytest.raises(DemixerError, match="AAC is written at .* not 96000 Hz"):
        write_audio(tmp_path / "x.m4a", [sine_mix(0.1, 96000)], 96000, fmt=fmt)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("fmt", "words"), [
    (OutputFormat("aac", aac_bitrate=100), "AAC bit rate 100"),
    (OutputFormat("aac", "int24"), "AAC has no bit depth"),
    (OutputFormat("alac", "float32"), "ALAC cannot store float32"),
])
def test_impossible_m4a_formats(fmt: OutputFormat, words: str) -> None:
    with pytest.raises(DemixerError, match=words):
        fmt.validate(44100)


def test_m4a_extension_and_cancel_leaves_nothing(tmp_path: Path) -> None:
    assert OutputFormat("aac").ext == OutputFormat("alac").ext == "m4a"
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        write_audio(tmp_path / "x.m4a", [sine_mix(1.0, 44100)], 44100,
                    fmt=OutputFormat("alac"), cancel=cancel)
    assert list(tmp_path.iterdir()) == []
