"""Decode any audio file to a stereo float32 track at the model's rate, on disk.

The first stage of the pipeline (DESIGN.md). Memory never grows with the song's length:
blocks of about a second flow from the reader through a downmix to stereo and a streaming
soxr resampler into raw float32 files in `workdir`, and the result is a read-only
(2, N) np.memmap. The mean and std of the mono mix, which the separator normalises by, are
accumulated along the way in float64.

libsndfile (soundfile) reads first: WAV, FLAC, AIFF, OGG/Opus, MP3; it is exact and
bit-identical to `soundfile.read(..., dtype="float32")`. FFmpeg (PyAV) takes over for
everything else (m4a/aac/alac, wma, ...) and for files libsndfile fails on part way.
Every failure a person can act on is an `AudioDecodeError` whose text is one sentence naming
the file: "<path>: <reason>."
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from pathlib import Path

import av
import numpy as np
import soundfile as sf

from engine.errors import AudioDecodeError, CancelFlag, check_cancel
from engine.resample import StreamResampler, resampled_length

log = logging.getLogger(__name__)

BLOCK_SECONDS = 1.0  # source audio per block: a few MB even for 8 channels at 96 kHz
MINUS_3DB = 0.7071  # ITU-R BS.775 gain of the centre and surround channels in a stereo downmix
# FFmpeg sample formats (planar 'p' suffix stripped) -> divisor to float in [-1, 1); the same
# scaling libsndfile uses, so a file reads alike through either library.
_INT_SCALE = {"s16": 2.0**15, "s32": 2.0**31, "s64": 2.0**63}


# What a dropped folder or `demixer separate FOLDER` picks up: libsndfile's and FFmpeg's
# usual audio containers. A file given by name is always tried, whatever its extension.
AUDIO_SUFFIXES = frozenset({
    ".wav", ".wave", ".flac", ".aif", ".aiff", ".aifc", ".ogg", ".oga", ".opus", ".mp3",
    ".m4a", ".aac", ".alac", ".mp4", ".wma", ".webm", ".mka", ".caf"})


def find_audio_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders walked (sorted) for audio files by extension.

    Hidden files and folders are skipped: macOS leaves `._song.mp3` AppleDouble files on
    non-Apple disks, which are not audio.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.is_dir():
            found.append(path)
            continue
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found += [Path(root) / f for f in sorted(files)
                      if Path(f).suffix.lower() in AUDIO_SUFFIXES and not f.startswith(".")]
    return found


@dataclass
class DecodedTrack:
    """A decoded song: stereo float32 at `samplerate`, backed by a raw file in the workdir.

    `audio` is a read-only (2, N) float32 np.memmap, N = round(source_frames * samplerate /
    source_rate). `mean` and `std` are those of the mono mix `audio.mean(0)` (float64
    accumulation; std with ddof=1 like torch's `.std()`, no epsilon: silence gives 0.0).
    """

    path: Path
    source_rate: int
    source_channels: int
    source_frames: int
    samplerate: int
    audio: np.ndarray
    mean: float
    std: float

    def close(self) -> None:
        """Drop this track's reference to the memmap (the workdir owner deletes the file).

        The mapping itself closes when the last view of it is gone, so slices still held
        elsewhere stay valid.
        """
        self.audio = np.zeros((2, 0), np.float32)


@dataclass
class _Source:
    """An open reader: (C, n) float32 blocks at `rate`; `frames` is for progress only;
    `declared` is the length the file's header states exactly (None where it only estimates),
    which the decoded audio must reach."""

    rate: int
    channels: int
    frames: int | None
    blocks: Iterator[np.ndarray]
    declared: int | None = None


# Formats whose header states the length exactly (FLAC's STREAMINFO, Ogg's last granule, an
# MP4's track duration, Matroska's), as libsndfile and FFmpeg name them. MP3 only with a
# Xing/Info frame (`_mp3_frame_count_tagged`); WAV/AIFF readers trust the file's size.
_EXACT_SNDFILE = frozenset({"FLAC", "OGG"})
_EXACT_FFMPEG = frozenset({"flac", "ogg", "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"})
# How far short of the declared length a decode may end: an MP3's declared count includes
# the encoder's delay and padding (a few thousand samples), other formats are exact.
_SHORT_TOLERANCE = 4608


def _fail(path: Path, reason: str) -> AudioDecodeError:
    return AudioDecodeError(f"{path}: {reason}.")


def _check_path(path: Path) -> None:
    """The cheap checks, so these cases never reach a library's cryptic message."""
    if not path.exists():
        raise _fail(path, "does not exist")
    if path.is_dir():
        raise _fail(path, "is a folder, not an audio file")
    if not path.is_file():  # a FIFO would block the reader forever, a device never ends
        raise _fail(path, "is not a regular file (a pipe, device or socket), so it cannot be "
                          "read as a song; save the audio to a file first")
    if path.stat().st_size == 0:
        raise _fail(path, "is empty (0 bytes)")
    if not os.access(path, os.R_OK):
        raise _fail(path, "cannot be read (permission denied)")


def _unreadable(path: Path, err: Exception) -> AudioDecodeError:
    reason = getattr(err, "strerror", None) or str(err)
    return _fail(path, f"is not an audio file that can be read ({reason})")


def probe(path: Path) -> tuple[int, int, int | None]:
    """(sample rate, channels, frames) of an audio file without decoding it.

    frames is exact for PCM and FLAC, an estimate for compressed formats (from the header or
    the container's duration), None if the container does not say.
    """
    path = Path(path)
    _check_path(path)
    try:
        with _native_stderr_silenced():
            info = sf.info(str(path))
        return info.samplerate, info.channels, info.frames
    except sf.SoundFileError:
        pass  # not for libsndfile: ask FFmpeg
    try:
        with av.open(str(path)) as container:
            stream = _audio_stream(container, path)
            return stream.rate, stream.channels, _av_frames_estimate(container, stream)
    except av.FFmpegError as err:
        raise _unreadable(path, err) from None


# ---------------------------------------------------------------- channel layouts ---------

@lru_cache(maxsize=16)
def _downmix_matrix(channels: int) -> np.ndarray:
    """(2, C) float32 gains from C > 2 channels to stereo.

    5.1 and 7.1 in WAV/FFmpeg order (L R C LFE Ls Rs [Lb Rb]) get the ITU downmix: front
    pair at unity, centre and surrounds at -3 dB, LFE dropped (it carries no stereo image and
    the model never saw it). Other counts have no standard order, but channels come in
    left/right pairs in every common layout (quad, 5.0, 6.1, ...), so even channels average
    to the left, odd ones to the right, and an unpaired last channel (usually a centre) goes
    to both. The level of the result does not matter to separation: the separator normalises
    by the track's std, and the writers rescale to prevent clipping.
    """
    m = np.zeros((2, channels), np.float32)
    if channels in (6, 8):
        m[0, 0] = m[1, 1] = 1.0
        m[:, 2] = MINUS_3DB
        m[0, 4::2] = m[1, 5::2] = MINUS_3DB
        return m
    m[0, 0:channels - 1:2] = 1.0
    m[1, 1::2] = 1.0
    if channels % 2:
        m[:, -1] = 1.0
    return m / m.sum(axis=1, keepdims=True)


def to_stereo(block: np.ndarray) -> np.ndarray:
    """(C, n) float32 -> (2, n) float32: stereo as is, mono doubled, more channels downmixed."""
    channels = block.shape[0]
    if channels == 2:
        return block
    if channels == 1:
        return np.repeat(block, 2, axis=0)
    return _downmix_matrix(channels) @ block


# ---------------------------------------------------------------- readers ---------------

@contextmanager
def _soundfile_source(path: Path) -> Iterator[_Source]:
    """libsndfile reader; raises sf.SoundFileError (open or mid-stream) to hand over to FFmpeg."""
    with _native_stderr_silenced():
        f = sf.SoundFile(str(path))
    with f:
        exact = f.format in _EXACT_SNDFILE or (f.format == "MP3"
                                               and _mp3_frame_count_tagged(path))
        yield _Source(f.samplerate, f.channels, f.frames, _soundfile_blocks(f),
                      f.frames if exact else None)


def _mp3_frame_count_tagged(path: Path) -> bool:
    """True if the MP3's first frame is a Xing/Info tag, which counts the frames exactly
    (without it, a reader estimates the length from the bit rate and the file size)."""
    try:
        with open(path, "rb") as f:
            head = f.read(10)
            start = 0
            if head[:3] == b"ID3" and len(head) == 10:  # skip an ID3v2 tag (syncsafe size)
                size = (head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (
                    head[8] & 0x7F) << 7 | (head[9] & 0x7F)
                start = 10 + size
            f.seek(start)
            first = f.read(4096)
    except OSError:
        return False
    return b"Xing" in first[:200] or b"Info" in first[:200]


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 on /dev/null while libsndfile opens a file.

    Its MP3 decoder (mpg123) prints "Note: Illegal Audio-MPEG-Header ..." straight to fd 2
    while it sniffs a file that is not MP3, ahead of the one sentence the user should get.
    Only the open is covered: fd 2 is process-wide, so the window stays short, and a lock
    keeps two threads from saving each other's /dev/null as the "real" stderr.
    """
    with _STDERR_LOCK:
        if sys.stderr is not None:  # None in a windowed .app
            sys.stderr.flush()  # what Python already wrote still goes out
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 at all: nothing to protect
            yield
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


_STDERR_LOCK = threading.Lock()


def _soundfile_blocks(f: sf.SoundFile) -> Iterator[np.ndarray]:
    size = max(1, round(f.samplerate * BLOCK_SECONDS))
    while True:
        block = f.read(size, dtype="float32", always_2d=True)  # (n, C)
        if not len(block):
            return
        yield block.T


def _audio_stream(container: av.container.InputContainer, path: Path) -> av.AudioStream:
    if not container.streams.audio:
        raise _fail(path, "contains no audio")
    return container.streams.audio[0]


def _av_frames_estimate(container: av.container.InputContainer,
                        stream: av.AudioStream) -> int | None:
    """Frames from the stream's or the container's duration (for compressed audio an estimate)."""
    if stream.duration is not None and stream.time_base is not None:
        return round(stream.duration * stream.time_base * stream.rate)
    if container.duration is not None:  # in AV_TIME_BASE units (microseconds)
        return round(container.duration * stream.rate / 1_000_000)
    return None


@contextmanager
def _av_source(path: Path) -> Iterator[_Source]:
    """FFmpeg reader. The first frame is decoded up front: its rate and channel count are
    the truth (stream headers can be wrong, e.g. HE-AAC's doubled rate)."""
    try:
        container = av.open(str(path))
    except av.FFmpegError as err:
        raise _unreadable(path, err) from None
    with container:
        stream = _audio_stream(container, path)
        frames = _av_frames(container, stream, path)
        first = next(frames, None)
        if first is None:
            raise _fail(path, "contains no audio")
        arrays = _av_arrays(chain([first], frames), first.rate, first.layout.nb_channels, path)
        blocks = _rebatch(arrays, max(1, round(first.rate * BLOCK_SECONDS)))
        estimate = _av_frames_estimate(container, stream)
        exact = container.format.name in _EXACT_FFMPEG or (
            container.format.name == "mp3" and _mp3_frame_count_tagged(path))
        yield _Source(first.rate, first.layout.nb_channels, estimate, blocks,
                      estimate if exact and first.rate == stream.rate else None)


def _av_frames(container: av.container.InputContainer, stream: av.AudioStream,
               path: Path) -> Iterator[av.AudioFrame]:
    """Decoded frames. A packet the decoder rejects is skipped (a damaged spot costs a few
    ms, not the song); a container that breaks off ends the stream there (truncated file)."""
    packets = container.demux(stream)
    skipped, error = 0, None
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.FFmpegError as err:
            log.warning("%s: the data breaks off (%s); keeping the audio before it", path, err)
            break
        try:
            decoded = packet.decode()
        except av.FFmpegError as err:
            skipped, error = skipped + 1, err
            continue
        yield from decoded
    if skipped:
        log.warning("%s: skipped %d damaged packet(s) (%s)", path, skipped, error)


def _frame_to_array(frame: av.AudioFrame) -> np.ndarray:
    """An FFmpeg frame of any sample format -> (C, n) float32 in [-1, 1)."""
    data = frame.to_ndarray()
    if not frame.format.is_planar:  # packed: one row of interleaved samples
        data = data.reshape(-1, frame.layout.nb_channels).T
    kind = frame.format.name.rstrip("p")
    if kind == "u8":
        return (data.astype(np.float32) - 128.0) / np.float32(128.0)
    if kind in _INT_SCALE:
        return data.astype(np.float32) * np.float32(1.0 / _INT_SCALE[kind])
    return data.astype(np.float32, copy=False)


def _av_arrays(frames: Iterator[av.AudioFrame], rate: int, channels: int,
               path: Path) -> Iterator[np.ndarray]:
    """Frames as (C, n) float32 on their timeline: where the decoder skipped damaged data
    (the next frame's timestamp lies beyond the samples so far), the gap becomes silence, so
    everything after the damage stays in place instead of arriving early."""
    position = origin = None  # samples so far on the stream's timeline
    for frame in frames:
        if frame.rate != rate or frame.layout.nb_channels != channels:
            raise _fail(path, "changes its sample rate or channel count part way, "
                              "which is not supported")
        array = _frame_to_array(frame)
        start = _frame_start(frame, rate)
        if start is not None and origin is None:
            origin = start
        if start is not None and origin is not None and position is not None:
            gap = start - origin - position
            if gap > 0:
                log.warning("%s: %d samples lost to damage at %.2f s; filled with silence",
                            path, gap, position / rate)
                yield np.zeros((channels, gap), np.float32)
                position += gap
            elif gap < 0:  # overlapping timestamps: keep the timeline, drop the overlap
                array = array[:, min(-gap, array.shape[1]):]
        position = (position or 0) + array.shape[1]
        yield array


def _frame_start(frame: av.AudioFrame, rate: int) -> int | None:
    """A frame's first sample on the stream's timeline, from its timestamp (None if none)."""
    if frame.pts is None or frame.time_base is None:
        return None
    return round(frame.pts * frame.time_base * rate)


def _rebatch(arrays: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Join small (C, n) arrays (FFmpeg frames are ~1024 samples) into blocks of >= size."""
    pending: list[np.ndarray] = []
    count = 0
    for array in arrays:
        pending.append(array)
        count += array.shape[1]
        if count >= size:
            yield np.concatenate(pending, axis=1)
            pending, count = [], 0
    if pending:
        yield np.concatenate(pending, axis=1)


# ---------------------------------------------------------------- the on-disk result -----

class _StereoSink:
    """Appends (2, m) float32 blocks to raw files in `workdir`; ends as a (2, N) memmap.

    Each channel goes to its own file while the length is unknown, and the right one is
    appended to the left at the end, so the result is channel-first without a transpose pass.
    Stats: shifted sums (shift = the first block's mean) in float64, so a DC offset does not
    cancel catastrophically in sum(x^2) - sum(x)^2 / n, and trimmed frames subtract exactly.
    """

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="decoded-", suffix=".f32", dir=workdir)
        self.path = Path(name)
        self._right_path = self.path.with_suffix(".right")
        self._left = os.fdopen(fd, "w+b")
        self._right = open(self._right_path, "x+b")  # noqa: SIM115 - closed in finish/discard
        self.frames = 0
        self._shift: float | None = None
        self._sum = self._sumsq = 0.0

    def _accumulate(self, block: np.ndarray, sign: float) -> None:
        mono = (block[0].astype(np.float64) + block[1]) * 0.5
        if self._shift is None:
            self._shift = float(mono.mean())
        dev = mono - self._shift
        self._sum += sign * float(dev.sum())
        self._sumsq += sign * float(dev @ dev)

    def write(self, block: np.ndarray) -> None:
        if block.shape[1] == 0:
            return
        block[0].astype(np.float32, copy=False).tofile(self._left)
        block[1].astype(np.float32, copy=False).tofile(self._right)
        self._accumulate(block, 1.0)
        self.frames += block.shape[1]

    def _trim(self, count: int) -> None:
        """Drop the last `count` frames (the resampler's tail overshoot: a frame or two)."""
        keep = self.frames - count
        tail = []
        for f in (self._left, self._right):
            f.flush()
            f.seek(keep * 4)
            tail.append(np.frombuffer(f.read(count * 4), np.float32))
            f.truncate(keep * 4)
            f.seek(0, os.SEEK_END)
        self._accumulate(np.stack(tail), -1.0)
        self.frames = keep

    def finish(self, frames: int) -> np.memmap:
        """Pad with zeros or trim to exactly `frames` (>= 1) frames; return the (2, N) memmap."""
        if self.frames > frames:
            self._trim(self.frames - frames)
        while self.frames < frames:
            self.write(np.zeros((2, min(frames - self.frames, 1 << 16)), np.float32))
        self._right.seek(0)
        shutil.copyfileobj(self._right, self._left, 1 << 20)
        self._right.close()
        self._right_path.unlink()
        self._left.close()
        return np.memmap(self.path, np.float32, mode="r", shape=(2, frames))

    @property
    def mean(self) -> float:
        return (self._shift or 0.0) + self._sum / self.frames

    @property
    def std(self) -> float:
        """ddof=1 like torch; a single frame has no spread (torch would say nan)."""
        if self.frames < 2:
            return 0.0
        var = (self._sumsq - self._sum**2 / self.frames) / (self.frames - 1)
        return float(np.sqrt(max(var, 0.0)))

    def discard(self) -> None:
        """Close and delete everything written (on error or cancel)."""
        for f in (self._left, self._right):
            f.close()
        self.path.unlink(missing_ok=True)
        self._right_path.unlink(missing_ok=True)


# ---------------------------------------------------------------- decode ------------------

def _decode_blocks(source: _Source, sink: _StereoSink, samplerate: int, path: Path,
                   cancel: CancelFlag | None, progress: Callable[[float], None] | None) -> int:
    """Source blocks -> stereo -> resampled -> sink. Returns the source frames decoded."""
    resampler = StreamResampler(source.rate, samplerate, 2)
    done = 0
    for block in source.blocks:
        check_cancel(cancel, f"decoding {path} was cancelled")
        if not np.isfinite(block).all():
            raise _fail(path, "contains NaN or infinite samples")
        sink.write(resampler.process(to_stereo(block)))
        done += block.shape[1]
        if progress is not None and source.frames:
            progress(min(1.0, done / source.frames))
    sink.write(resampler.process(np.zeros((2, 0), np.float32), last=True))
    return done


def _decode_with(open_source: Callable[[Path], AbstractContextManager[_Source]], path: Path,
                 samplerate: int, workdir: Path, cancel: CancelFlag | None,
                 progress: Callable[[float], None] | None) -> DecodedTrack:
    with open_source(path) as source:
        sink = _StereoSink(workdir)
        try:
            frames = _decode_blocks(source, sink, samplerate, path, cancel, progress)
            _check_complete(path, frames, source)
            target = resampled_length(frames, source.rate, samplerate)
            if target == 0:
                raise _fail(path, "contains no audio")
            audio = sink.finish(target)
        except BaseException:
            sink.discard()
            raise
    return DecodedTrack(path, source.rate, source.channels, frames, samplerate, audio,
                        sink.mean, sink.std)


def _check_complete(path: Path, frames: int, source: _Source) -> None:
    """A file that decodes much shorter than its header says is damaged (cut off, or
    broken part way): separating the part that decodes would give short stems silently."""
    declared = source.declared
    if declared is None or frames >= declared - max(_SHORT_TOLERANCE, declared // 200):
        return
    raise _fail(path, f"is damaged or cut short: its header says {declared / source.rate:.1f} s "
                      f"but only {frames / source.rate:.1f} s of audio could be decoded")


def decode(path: Path, samplerate: int, workdir: Path, *, cancel: CancelFlag | None = None,
           progress: Callable[[float], None] | None = None) -> DecodedTrack:
    """Decode `path` to a stereo float32 (2, N) memmap at `samplerate` Hz in `workdir`.

    Any rate and channel count; resampled with soxr (HQ) only when the rates differ, else
    bit-identical to libsndfile's float32. Values beyond +-1 are kept. `cancel` is checked
    between blocks (raises `Cancelled`); `progress(fraction)` is called per block when the
    length is known. On any error or cancel, nothing is left in `workdir`.
    Raises AudioDecodeError (missing, empty, not audio, no audio, NaN/Inf samples).
    """
    path, workdir = Path(path), Path(workdir)
    _check_path(path)
    try:
        try:
            track = _decode_with(_soundfile_source, path, samplerate, workdir, cancel, progress)
        except sf.SoundFileError as err:
            log.debug("libsndfile cannot read %s (%s); trying FFmpeg", path, err)
            track = _decode_with(_av_source, path, samplerate, workdir, cancel, progress)
    except OSError as err:  # the workdir, not the song: full disk, no permission
        reason = err.strerror or str(err)
        raise _fail(path, f"cannot be decoded into {workdir} ({reason})") from None
    if progress is not None:
        progress(1.0)
    return track
