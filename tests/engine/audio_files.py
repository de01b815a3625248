"""Test audio of every kind, generated in Python (numpy + soundfile + PyAV), no system tools.

Arrays are channel-first (C, N) float32 like the engine's. Import from any test:

    from tests.engine.audio_files import sine_mix, write_wav, write_with_av
    audio = sine_mix(2.0, 44100, channels=2)
    write_wav(tmp_path / "song.wav", audio, 44100, subtype="PCM_24")
    write_with_av(tmp_path / "song.m4a", audio, 44100, codec="aac")
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import soundfile as sf

# Containers PyAV picks for a codec when the caller names none (keyed by codec name).
_DEFAULT_CONTAINER = {"aac": "mp4", "alac": "mp4", "libopus": "ogg", "opus": "ogg",
                      "wmav2": "asf", "libmp3lame": "mp3", "mp3": "mp3", "flac": "flac",
                      "vorbis": "ogg", "pcm_s16le": "wav", "pcm_f32le": "wav"}
# wmav2 refuses to open without a bit rate (FFmpeg leaves it 0 by default).
_DEFAULT_BITRATE = {"wmav2": 128_000}
# FFmpeg's layout names for channel counts whose order decode's downmix assumes.
_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1",
            8: "7.1"}


def sine_mix(seconds: float, rate: int, channels: int = 2, *, amplitude: float = 0.5,
             seed: int = 0) -> np.ndarray:
    """A few sines per channel (different per channel) plus a little noise, (C, N) float32.

    N = round(seconds * rate). The peak stays below `amplitude`; frequencies stay below a
    quarter of the rate, so any resampling in the tests keeps them.
    """
    frames = round(seconds * rate)
    rng = np.random.default_rng(seed)
    t = np.arange(frames, dtype=np.float64) / rate
    out = np.empty((channels, frames), np.float32)
    top = min(5000.0, rate / 4)
    for c in range(channels):
        freqs = rng.uniform(50.0, top, size=3)
        phases = rng.uniform(0, 2 * np.pi, size=3)
        sig = sum(np.sin(2 * np.pi * f * t + p) for f, p in zip(freqs, phases, strict=True))
        sig = sig / 3 * 0.9 + 0.1 * rng.uniform(-1, 1, frames)
        out[c] = amplitude * sig
    return out


def write_soundfile(path: Path, audio: np.ndarray, rate: int, subtype: str | None = None,
                    format: str | None = None) -> Path:
    """Write (C, N) audio with libsndfile; format from the extension unless given."""
    path = Path(path)
    sf.write(str(path), np.ascontiguousarray(np.asarray(audio).T), rate, subtype=subtype,
             format=format)
    return path


def write_wav(path: Path, audio: np.ndarray, rate: int, subtype: str = "PCM_16") -> Path:
    """A WAV file of (C, N) float audio: PCM_16, PCM_24, PCM_32, FLOAT or DOUBLE."""
    return write_soundfile(path, audio, rate, subtype=subtype, format="WAV")


def _to_sample_format(audio: np.ndarray, fmt: av.AudioFormat) -> np.ndarray:
    """(C, N) float -> the layout PyAV's `AudioFrame.from_ndarray` wants for `fmt`."""
    if fmt.name.startswith("s16"):
        data = np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)
    elif fmt.name.startswith("s32"):
        data = np.clip(np.round(audio * 2.0**31), -2**31, 2**31 - 1).astype(np.int32)
    elif fmt.name.startswith("flt"):
        data = audio.astype(np.float32)
    else:
        raise ValueError(f"no conversion to sample format {fmt.name}")
    # Packed formats take one row of interleaved samples, planar ones a row per channel.
    if fmt.is_planar:
        return np.ascontiguousarray(data)
    return np.ascontiguousarray(data.T).reshape(1, -1)


def write_with_av(path: Path, audio: np.ndarray, rate: int, codec: str = "aac",
                  container: str | None = None, *, bitrate: int | None = None,
                  sample_format: str | None = None) -> Path:
    """Encode (C, N) float audio with FFmpeg through PyAV (aac, alac, libopus, wmav2, ...).

    The container defaults to the codec's usual one (mp4 for aac/alac, ogg for opus, asf for
    wma); `sample_format` picks one of the codec's formats (alac: s16p or s32p). Planar
    codecs (aac, alac, wmav2) take at most 7 channels here, a PyAV limitation.
    """
    path = Path(path)
    audio = np.asarray(audio, np.float32)
    channels, frames = audio.shape
    with av.open(str(path), "w", format=container or _DEFAULT_CONTAINER.get(codec)) as out:
        stream = out.add_stream(codec, rate=rate)
        assert isinstance(stream, av.AudioStream)
        layout = av.AudioLayout(_LAYOUTS.get(channels, f"{channels} channels"))
        formats = [f.name for f in stream.codec_context.codec.audio_formats or []]
        fmt = av.AudioFormat(sample_format or ("fltp" if "fltp" in formats else formats[0]))
        stream.layout, stream.format = layout, fmt
        if fmt.is_planar and channels >= 8:
            # PyAV 14-18 counts planes up to a NULL pointer that 8 planes overrun (IndexError).
            raise ValueError("PyAV cannot build planar frames of 8+ channels; use a packed "
                             "sample format (flac, pcm_s16le, libopus)")
        if bitrate or codec in _DEFAULT_BITRATE:
            stream.bit_rate = bitrate or _DEFAULT_BITRATE[codec]
        step = stream.codec_context.frame_size or 1024
        for start in range(0, frames, step):
            frame = av.AudioFrame.from_ndarray(
                _to_sample_format(audio[:, start:start + step], fmt), format=fmt.name,
                layout=layout.name)
            frame.rate, frame.pts = rate, start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def write_text(path: Path, text: str = "This is not audio, only text.\n" * 20) -> Path:
    """A text file, typically given an audio extension to fool the decoder."""
    Path(path).write_text(text, encoding="utf-8")
    return Path(path)


def write_random_bytes(path: Path, size: int = 20_000, seed: int = 0) -> Path:
    """`size` random bytes (seeded, so the test is the same on every run)."""
    Path(path).write_bytes(np.random.default_rng(seed).bytes(size))
    return Path(path)


def truncated_copy(src: Path, dst: Path, keep: float) -> Path:
    """The first `keep` fraction (0..1) of `src`'s bytes, as a damaged download would be."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * keep)])
    return Path(dst)


def write_long_wav(path: Path, seconds: float, rate: int, channels: int = 2,
                   subtype: str = "PCM_16", block_seconds: float = 5.0) -> Path:
    """A long WAV written block by block (a quiet sine sweep), so the test's RAM stays small."""
    total = round(seconds * rate)
    block = round(block_seconds * rate)
    with sf.SoundFile(str(path), "w", rate, channels, subtype=subtype, format="WAV") as f:
        for start in range(0, total, block):
            t = np.arange(start, min(start + block, total), dtype=np.float64) / rate
            mono = 0.3 * np.sin(2 * np.pi * (220.0 + 5.0 * t) * t)
            f.write(np.repeat(mono[:, None], channels, axis=1).astype(np.float32))
    return Path(path)
