"""Write stems (or sums of stems) to WAV, FLAC, MP3, AAC or ALAC, streaming and atomically.

The last stage of the pipeline (DESIGN.md). Inputs are (C, N) float32 arrays, usually
np.memmap stems at the model's rate; a 20-minute stem is 400 MB, so the signal
sum_i gains[i] * parts[i] is mixed, resampled (soxr, streaming) and encoded block by block.
Clipping is handled as demucs's `demucs.audio.prevent_clip` does; `rescale` needs the peak of
the whole output first, so it makes one extra pass over the blocks (nothing is kept). The
peak is that of the signal as written (after resampling), so a resampler's overshoot between
samples cannot clip either; without resampling it is exactly demucs's peak.

Integer samples are float * 2**(bits-1), rounded, clipped to [-2**(bits-1), 2**(bits-1) - 1]:
the inverse of how libsndfile and FFmpeg read them. (demucs multiplies by 2**15 - 1 and
truncates, a difference of at most one LSB.) MP3s get a LAME tag, so they decode gapless to
exactly the frames written.

Writes are atomic: a hidden temp file in the target folder (`.{name}.partial-XXXXXXXX`) is
fsynced and moved onto the target at the end (`engine.atomicio.commit_all`), and removed on
any error or cancel, so a stem file is either the old one or the complete new one, never half
of it. `stage_audio` stops before the move, so a set of stems can be swapped in together.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

import av
import lameenc
import numpy as np
import soundfile as sf

from engine.atomicio import Staged, commit_all, discard_temps, fsync_path
from engine.errors import CancelFlag, DemixerError, OutputExistsError, check_cancel
from engine.m4a import AAC_BITRATES, AAC_DEFAULT_BITRATE, M4aEncoder
from engine.resample import StreamResampler, resampled_length

BLOCK_FRAMES = 1 << 16  # ~1.5 s at 44.1 kHz: 0.5 MB per stereo float32 block
# What LAME can encode. Bit rates: the union of the MPEG-1 and MPEG-2/2.5 layer III CBR
# rates; LAME clamps to what the output rate's MPEG version allows (checked: 32-320 kbit/s at
# 32-48 kHz, 8-160 at 16-24 kHz, 8-64 at 8-12 kHz), so any listed rate works at any rate.
MP3_BITRATES = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160, 192, 224, 256, 320)
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
MP3_QUALITY = 2  # LAME's -q 2 (near-best, demucs's default preset)
_SUBTYPES = {"int16": "PCM_16", "int24": "PCM_24", "float32": "FLOAT"}
_RIFF_LIMIT = 0xFFFF_FFFF - (1 << 20)  # a WAV's sizes are 32-bit; beyond, RF64 (~4 GB)


@dataclass(frozen=True)
class OutputFormat:
    """How stems are written. `ext` is the file extension without a dot."""

    container: Literal["wav", "flac", "mp3", "aac", "alac"] = "wav"
    sample_format: Literal["int16", "int24", "float32"] = "int16"
    mp3_bitrate: int = 320
    clip_mode: Literal["rescale", "clamp", "none"] = "rescale"
    aac_bitrate: int = AAC_DEFAULT_BITRATE

    @property
    def ext(self) -> str:
        return "m4a" if self.container in ("aac", "alac") else self.container

    @property
    def lossy(self) -> bool:
        """MP3 and AAC: encoded from floats (AAC) or 16 bits (MP3), at a bit rate."""
        return self.container in ("mp3", "aac")

    def rate_for(self, rate: int) -> int:
        """The rate to write a `rate` Hz source at: itself, except for MP3 and AAC (8-48 kHz
        here; AAC above 48 kHz is legal but Traktor and many players refuse it, so NI's tool
        resamples too): the highest such rate below it, of the 44.1 kHz family for multiples
        of 11025 Hz (96 kHz -> 48 kHz, 88.2 kHz -> 44.1 kHz, 6 kHz -> 8 kHz). Callers pass
        frames_out to match: `resampled_length(source_frames, rate, fmt.rate_for(rate))`."""
        if not self.lossy or rate in MP3_RATES:
            return rate
        family_44k = rate % 11025 == 0
        below = [r for r in MP3_RATES if r <= rate and (not family_44k or r % 11025 == 0)]
        return max(below, default=MP3_RATES[0])

    def validate(self, rate: int | None = None) -> None:
        """Raise DemixerError (one sentence) for a combination that cannot be written; with
        `rate`, also check that the container can hold that sample rate."""
        if self.container not in ("wav", "flac", "mp3", "aac", "alac"):
            raise DemixerError(f"Unknown output format {self.container!r}: use wav, flac, mp3, "
                               "aac or alac.")
        if self.sample_format not in _SUBTYPES:
            raise DemixerError(f"Unknown sample format {self.sample_format!r}: "
                               "use int16, int24 or float32.")
        if self.clip_mode not in ("rescale", "clamp", "none"):
            raise DemixerError(f"Unknown clip mode {self.clip_mode!r}: "
                               "use rescale, clamp or none.")
        if self.container in ("flac", "alac") and self.sample_format == "float32":
            raise DemixerError(f"{self.container.upper()} cannot store float32 samples: use "
                               "int16 or int24, or WAV for float32.")
        if self.container == "mp3":
            self._validate_mp3(rate)
        if self.container == "aac":
            self._validate_aac(rate)
        if rate is not None and rate <= 0:
            raise DemixerError(f"The output sample rate must be positive, not {rate}.")

    def _validate_mp3(self, rate: int | None) -> None:
        if self.sample_format != "int16":
            raise DemixerError(f"MP3 is always encoded from 16-bit samples: {self.sample_format} "
                               "applies to WAV and FLAC only.")
        if self.mp3_bitrate not in MP3_BITRATES:
            raise DemixerError(f"MP3 bit rate {self.mp3_bitrate} kbit/s is not one LAME "
                               f"supports: use one of {', '.join(map(str, MP3_BITRATES))}.")
        if rate is not None and rate not in MP3_RATES:
            raise DemixerError(f"MP3 cannot be written at {rate} Hz: use one of "
                               f"{', '.join(map(str, MP3_RATES))} Hz, or WAV/FLAC.")

    def _validate_aac(self, rate: int | None) -> None:
        if self.sample_format != "int16":
            raise DemixerError(f"AAC has no bit depth to choose: {self.sample_format} applies to "
                               "WAV, FLAC and ALAC only.")
        if self.aac_bitrate not in AAC_BITRATES:
            raise DemixerError(f"AAC bit rate {self.aac_bitrate} kbit/s is not offered: use one "
                               f"of {', '.join(map(str, AAC_BITRATES))}.")
        if rate is not None and rate not in MP3_RATES:
            raise DemixerError(f"AAC is written at {', '.join(map(str, MP3_RATES))} Hz only, "
                               f"not {rate} Hz: use ALAC, WAV or FLAC.")


def export_rate(fmt: OutputFormat, source: tuple[int, int], model: tuple[int, int],
                keep_model_rate: bool = False) -> tuple[int, int]:
    """The one rule for the rate and exact length stems are written at (the CLI's job and
    the app's export): the song's own (`source` = (rate, frames)), or the model's with
    `keep_model_rate`, lowered to a rate the format carries (`rate_for`: MP3 turns 96 kHz
    into 48 kHz) with the length to match: (rate, frames)."""
    rate, frames = model if keep_model_rate else source
    out_rate = fmt.rate_for(rate)
    return out_rate, resampled_length(frames, rate, out_rate)


# ---------------------------------------------------------------- signal ------------------

@dataclass(frozen=True)
class MixSignal:
    """What to write: sum_i gains[i] * parts[i], (C, N) float32 at rate_in, resampled to
    rate_out and made exactly `frames` frames long."""

    parts: Sequence[np.ndarray]
    gains: tuple[float, ...]
    rate_in: int
    rate_out: int
    frames: int

    @property
    def channels(self) -> int:
        return int(self.parts[0].shape[0])

    def _mix(self, start: int, stop: int) -> np.ndarray:
        """The parts' weighted sum over [start, stop), float32 math as demucs does it."""
        out = np.multiply(self.parts[0][:, start:stop], np.float32(self.gains[0]),
                          dtype=np.float32)
        for part, gain in zip(self.parts[1:], self.gains[1:], strict=True):
            out += np.multiply(part[:, start:stop], np.float32(gain), dtype=np.float32)
        return out

    def blocks(self, cancel: CancelFlag | None, path: Path) -> Iterator[np.ndarray]:
        """(C, n) float32 blocks at rate_out, `frames` in all: the resampler's tail is
        trimmed, or zeros are appended. Each call streams afresh (new resampler)."""
        resampler = StreamResampler(self.rate_in, self.rate_out, self.channels)
        length, emitted = self.parts[0].shape[1], 0
        for start in range(0, length, BLOCK_FRAMES):
            check_cancel(cancel, f"writing {path} was cancelled")
            stop = min(start + BLOCK_FRAMES, length)
            block = resampler.process(self._mix(start, stop), last=stop == length)
            block = block[:, :self.frames - emitted]
            emitted += block.shape[1]
            if block.shape[1]:
                yield block
            if emitted == self.frames:
                return
        while emitted < self.frames:
            check_cancel(cancel, f"writing {path} was cancelled")
            count = min(BLOCK_FRAMES, self.frames - emitted)
            yield np.zeros((self.channels, count), np.float32)
            emitted += count


def rescale_divisor(peak: float) -> np.float32:
    """demucs's `prevent_clip(mode="rescale")` divisor, max(1.01 * peak, 1), in float32 as
    torch computes it, so the written samples are the same bits."""
    return np.float32(max(np.float32(1.01) * np.float32(peak), np.float32(1.0)))


def prevent_clip(block: np.ndarray, mode: str, divisor: np.float32) -> np.ndarray:
    """demucs.audio.prevent_clip on one block, given the whole signal's rescale divisor."""
    if mode == "rescale":
        return block / divisor
    if mode == "clamp":
        return np.clip(block, np.float32(-0.99), np.float32(0.99))
    return block


def _to_int(block: np.ndarray, bits: int) -> np.ndarray:
    """(C, n) float32 -> (n, C) int16 (bits=16) or int32 holding 24-bit samples in the top
    bits (libsndfile writes an int32's top 24 bits as PCM_24). Scale 2**(bits-1), as
    libsndfile reads back, rounded, and clipped to [-1, 1) so nothing wraps around."""
    full = 2.0 ** (bits - 1)
    ints = np.clip(np.rint(block.T.astype(np.float64) * full), -full, full - 1)
    if bits == 16:
        return ints.astype(np.int16)
    return ints.astype(np.int32) << 8


# ---------------------------------------------------------------- encoders ----------------

class _Encoder(Protocol):
    """write() blocks, then finish() on success; close() always (idempotent)."""

    def write(self, block: np.ndarray) -> None: ...
    def finish(self) -> None: ...
    def close(self) -> None: ...


def soundfile_container(fmt: OutputFormat, channels: int, frames: int) -> str:
    """libsndfile's major format: WAV, or RF64 when the data would pass a RIFF's 4 GB
    (float32 stereo at 48 kHz longer than 3.1 hours); FLAC as asked."""
    if fmt.container != "wav":
        return fmt.container.upper()
    bytes_per_sample = {"int16": 2, "int24": 3, "float32": 4}[fmt.sample_format]
    return "RF64" if frames * channels * bytes_per_sample > _RIFF_LIMIT else "WAV"


class _SoundfileEncoder:
    """WAV / FLAC through libsndfile; integer samples are converted here, not by libsndfile,
    so the rounding and clipping are ours and the same on every platform."""

    def __init__(self, tmp: Path, fmt: OutputFormat, rate: int, channels: int,
                 frames: int) -> None:
        container = soundfile_container(fmt, channels, frames)
        self._bits = {"int16": 16, "int24": 24}.get(fmt.sample_format)
        self._file = sf.SoundFile(str(tmp), "w", rate, channels,
                                  subtype=_SUBTYPES[fmt.sample_format], format=container)

    def write(self, block: np.ndarray) -> None:
        if self._bits is None:
            self._file.write(np.ascontiguousarray(block.T, np.float32))
        else:
            self._file.write(_to_int(block, self._bits))

    def finish(self) -> None:
        self._file.close()  # writes the header's final sizes

    def close(self) -> None:
        self._file.close()


class _Mp3Encoder:
    """MP3 CBR with LAME (lameenc), fed 16-bit blocks, bytes streamed to the file.

    lameenc writes no LAME/Info tag, so decoders would keep LAME's 576-sample priming delay
    and the zero padding of the last frame (the file would decode ~1100-2300 samples long,
    shifted). We reserve room for the tag in front of the first frame and fill it in at the
    end, so FFmpeg, mpg123 (libsndfile), Apple's decoders and DAWs trim both: gapless, exact.
    """

    def __init__(self, tmp: Path, fmt: OutputFormat, rate: int, channels: int) -> None:
        self._lame = lameenc.Encoder()
        self._lame.set_bit_rate(fmt.mp3_bitrate)
        self._lame.set_in_sample_rate(rate)
        self._lame.set_out_sample_rate(rate)  # else LAME drops the rate at low bit rates
        self._lame.set_channels(channels)
        self._lame.set_quality(MP3_QUALITY)
        self._lame.silence()
        self._file = open(tmp, "x+b")  # noqa: SIM115 - closed in close()
        self._samples = 0
        self._tag: _FrameHeader | None = None  # header of the reserved tag frame

    def write(self, block: np.ndarray) -> None:
        self._samples += block.shape[1]
        self._put(bytes(self._lame.encode(_to_int(block, 16).tobytes())))

    def _put(self, data: bytes) -> None:
        if data and self._tag is None and self._file.tell() == 0:
            first = _FrameHeader.parse(data[:4])
            if first is not None:
                self._tag = _tag_header(first)
                self._file.write(bytes(self._tag.length))  # filled in by finish()
        self._file.write(data)

    def finish(self) -> None:
        self._put(bytes(self._lame.flush()))
        if self._tag is not None:
            frames = _count_frames(self._file, self._tag.length)
            size = self._file.seek(0, os.SEEK_END)
            self._file.seek(0)
            self._file.write(_info_frame(self._tag, frames, size, self._samples))

    def close(self) -> None:
        self._file.close()


# ---------------------------------------------------------------- MP3 gapless tag ---------
# The Xing "Info" frame with LAME's extension (LAME's VbrTag.c; read by FFmpeg's mp3dec.c and
# mpg123): a silent frame whose payload says how many frames follow and how many samples of
# encoder delay and padding to drop. Decoders add their own 529 samples of delay themselves.

LAME_ENCODER_DELAY = 576
_BITRATES_KBPS = {True: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
                  False: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)}
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_TAG_PAYLOAD = 156  # "Info" .. quality (120 bytes) + LAME extension with its CRC (36 bytes)


@dataclass(frozen=True)
class _FrameHeader:
    """The 4-byte header of an MPEG audio layer III frame."""

    version: int  # 3 = MPEG-1, 2 = MPEG-2, 0 = MPEG-2.5
    bitrate_index: int
    rate_index: int
    padding: int
    mode: int  # 3 = mono
    rest: int  # the low 6 bits (mode extension, copyright, original, emphasis)

    @classmethod
    def parse(cls, head: bytes) -> _FrameHeader | None:
        if len(head) < 4:
            return None
        v = int.from_bytes(head[:4], "big")
        header = cls((v >> 19) & 3, (v >> 12) & 15, (v >> 10) & 3, (v >> 9) & 1,
                     (v >> 6) & 3, v & 63)
        valid = (v >> 21 == 0x7FF and (v >> 17) & 3 == 1 and header.version != 1
                 and 0 < header.bitrate_index < 15 and header.rate_index < 3)
        return header if valid else None

    def to_bytes(self) -> bytes:
        v = (0x7FF << 21 | self.version << 19 | 1 << 17 | 1 << 16 | self.bitrate_index << 12
             | self.rate_index << 10 | self.padding << 9 | self.mode << 6 | self.rest)
        return v.to_bytes(4, "big")

    @property
    def mpeg1(self) -> bool:
        return self.version == 3

    @property
    def length(self) -> int:
        kbps = _BITRATES_KBPS[self.mpeg1][self.bitrate_index]
        rate = _RATES[self.version][self.rate_index]
        return (144 if self.mpeg1 else 72) * kbps * 1000 // rate + self.padding

    @property
    def samples(self) -> int:
        return 1152 if self.mpeg1 else 576

    @property
    def side_info(self) -> int:
        return (17 if self.mode == 3 else 32) if self.mpeg1 else (9 if self.mode == 3 else 17)


def _tag_header(first: _FrameHeader) -> _FrameHeader:
    """The stream's own header (no CRC, no padding), at a higher bit rate if the frame is too
    small for the tag (low bit rates at high rates): decoders do not care."""
    for index in range(first.bitrate_index, 15):
        tag = replace(first, bitrate_index=index, padding=0)
        if tag.length >= 4 + tag.side_info + _TAG_PAYLOAD:
            return tag
    raise AssertionError("a 320 kbit/s layer III frame always holds the tag")


def _count_frames(f: BinaryIO, start: int) -> int:
    """Frames from byte `start` to the end, walking the headers (~50k seeks for 20 min)."""
    count, pos = 0, start
    while (header := _FrameHeader.parse(_read_at(f, pos, 4))) is not None:
        count, pos = count + 1, pos + header.length
    return count


def _read_at(f: BinaryIO, pos: int, size: int) -> bytes:
    f.seek(pos)
    return f.read(size)


def _crc16(data: bytes) -> int:
    """CRC-16/ARC (poly 0x8005 reflected, init 0), LAME's tag checksum."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def _info_frame(tag: _FrameHeader, frames: int, size: int, samples: int) -> bytes:
    """The complete tag frame: `frames` audio frames follow it, the file has `size` bytes,
    and `samples` frames of audio were encoded."""
    padding = frames * tag.samples - LAME_ENCODER_DELAY - samples
    padding = min(max(padding, 0), 4095)  # a 12-bit field; LAME's is at most ~2300
    toc = bytes(i * 256 // 100 for i in range(100))  # CBR: linear seek table
    xing = b"Info" + struct.pack(">III", 0x0F, frames, size) + toc + struct.pack(">I", 0)
    lame = (b"LAME3.100" + struct.pack(">BBIHHBB", 0x01, 0, 0, 0, 0, 0,  # 0x01: CBR
                                       min(_BITRATES_KBPS[tag.mpeg1][tag.bitrate_index], 255))
            + (LAME_ENCODER_DELAY << 12 | padding).to_bytes(3, "big")
            + struct.pack(">BBHIH", 0, 0, 0, size, 0))
    body = tag.to_bytes() + bytes(tag.side_info) + xing + lame
    body += struct.pack(">H", _crc16(body))
    return body + bytes(tag.length - len(body))


def _open_encoder(tmp: Path, fmt: OutputFormat, rate: int, channels: int,
                  frames: int) -> _Encoder:
    if fmt.container == "mp3":
        return _Mp3Encoder(tmp, fmt, rate, channels)
    if fmt.container in ("aac", "alac"):
        return M4aEncoder(tmp, fmt.container, rate, channels, fmt.sample_format,
                          fmt.aac_bitrate)
    return _SoundfileEncoder(tmp, fmt, rate, channels, frames)


# ---------------------------------------------------------------- write_audio -------------

def _check_parts(parts: Sequence[np.ndarray], gains: Sequence[float] | None, path: Path,
                 fmt: OutputFormat) -> tuple[float, ...]:
    """The gains as a tuple (default 1.0 each); ValueError for inconsistent arguments."""
    if not parts:
        raise ValueError(f"{path}: nothing to write (no parts)")
    shape = parts[0].shape
    if len(shape) != 2 or any(p.shape != shape for p in parts):
        raise ValueError(f"{path}: parts must all be (C, N), got {[p.shape for p in parts]}")
    gains = tuple(gains) if gains is not None else (1.0,) * len(parts)
    if len(gains) != len(parts):
        raise ValueError(f"{path}: {len(gains)} gains for {len(parts)} parts")
    if fmt.container in ("mp3", "aac", "alac") and shape[0] not in (1, 2):
        name = fmt.container.upper()
        raise DemixerError(f"{path} cannot be written: {name} files here hold 1 or 2 "
                           f"channels, not {shape[0]}.")
    return gains


def partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial-{secrets.token_hex(4)}")


def peak_of(blocks: Iterator[np.ndarray]) -> float:
    peak = 0.0
    for block in blocks:
        if block.size:
            peak = max(peak, float(np.abs(block).max()))
    return peak


def write_audio(path: Path, parts: Sequence[np.ndarray], rate_in: int, *,
                rate_out: int | None = None, frames_out: int | None = None,
                fmt: OutputFormat = OutputFormat(), gains: Sequence[float] | None = None,
                overwrite: bool = False, cancel: CancelFlag | None = None) -> Path:
    """Write sum_i gains[i] * parts[i] ((C, N) float32 at `rate_in` Hz) to `path`.

    Resampled to `rate_out` (default `rate_in`) and exactly `frames_out` frames long (default
    round(N * rate_out / rate_in)). Parent folders are created. Raises OutputExistsError if
    `path` exists and not `overwrite` (before writing anything), DemixerError for an
    impossible format or an I/O failure, Cancelled if `cancel` is set; in every such case
    `path` is untouched and no temp file remains. Returns `path`.
    """
    path = Path(path)
    temp = stage_audio(path, parts, rate_in, rate_out=rate_out, frames_out=frames_out, fmt=fmt,
                       gains=gains, overwrite=overwrite, cancel=cancel)
    staged = [Staged.of(path, temp)]
    try:
        commit_all(staged, overwrite)
    except FileExistsError:
        raise OutputExistsError(f"{path} exists already: pass --overwrite to replace it.") \
            from None
    except OSError as err:
        raise DemixerError(f"{path} cannot be written ({io_reason(err, path)}).") from None
    finally:
        discard_temps(staged)
    return path


def stage_audio(path: Path, parts: Sequence[np.ndarray], rate_in: int, *,
                rate_out: int | None = None, frames_out: int | None = None,
                fmt: OutputFormat = OutputFormat(), gains: Sequence[float] | None = None,
                overwrite: bool = False, cancel: CancelFlag | None = None) -> Path:
    """`write_audio`'s first half: the complete file, fsynced, in a hidden temporary beside
    `path` (returned); `path` itself is not touched. The caller places it
    (`engine.atomicio.commit_all`) or removes it. Same arguments and errors as `write_audio`;
    on an error no temporary remains."""
    path = Path(path)
    rate_out = rate_out or rate_in
    fmt.validate(rate_out)
    gains = _check_parts(parts, gains, path, fmt)
    if frames_out is None:
        frames_out = resampled_length(parts[0].shape[1], rate_in, rate_out)
    signal = MixSignal(parts, gains, rate_in, rate_out, frames_out)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists already: pass --overwrite to replace it.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _write_temp(path, signal, fmt, cancel)
    except (OSError, sf.SoundFileError, av.FFmpegError) as err:
        raise DemixerError(f"{path} cannot be written ({io_reason(err, path)}).") from None


def io_reason(err: BaseException, path: Path) -> str:
    """Why writing `path` failed, in words: libsndfile says only "System error." for a full
    disk, so the free space of the folder decides that case."""
    code = getattr(err, "errno", None)
    if code == errno.ENOSPC or _disk_nearly_full(path.parent):
        return "the disk is full"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if code == errno.EROFS:
        return "the disk is read-only"
    reason = getattr(err, "strerror", None) or str(err)
    return reason.rstrip(".")


def _disk_nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        return False


@contextmanager
def staged_temp(path: Path) -> Iterator[Path]:
    """A hidden temporary name beside `path` for the body to write; removed if the body fails.
    libsndfile and FFmpeg say "System error" for a full disk: the free space is judged while
    the failed temporary still holds what it took (after the unlink there may be room again),
    and a full disk is raised as ENOSPC, so `io_reason` names it."""
    tmp = partial_path(path)
    try:
        yield tmp
    except (sf.SoundFileError, av.FFmpegError) as err:
        full = _disk_nearly_full(tmp.parent)
        tmp.unlink(missing_ok=True)
        if full:
            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from err
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_temp(path: Path, signal: MixSignal, fmt: OutputFormat,
                cancel: CancelFlag | None) -> Path:
    divisor = np.float32(1.0)
    if fmt.clip_mode == "rescale":  # a first pass for the peak, as the whole song is not in RAM
        divisor = rescale_divisor(peak_of(signal.blocks(cancel, path)))
    with staged_temp(path) as tmp:
        encoder = _open_encoder(tmp, fmt, signal.rate_out, signal.channels, signal.frames)
        try:
            for block in signal.blocks(cancel, path):
                encoder.write(prevent_clip(block, fmt.clip_mode, divisor))
            encoder.finish()
        finally:
            encoder.close()
        fsync_path(tmp)
    return tmp
