"""AAC and ALAC in an MP4 file (`.m4a`, and the five streams of a `.stem.mp4`), through PyAV.

PyAV's bundled FFmpeg encodes (`aac`, `alac`) and muxes; no system ffmpeg is needed. The
muxer is FFmpeg's `ipod` (major brand `M4A `, as NI's own stem tool and Apple write), with the
movie time scale set to the sample rate, so that the edit list states the length in samples:

- AAC: the encoder puts 1024 samples of priming in front and pads the last frame to 1024.
  The edit list skips the priming (media_time 1024) and its duration is exactly the frames
  written; the last packet's duration (stts) ends there too. FFmpeg (so PyAV and
  `engine.decode`) skips the priming itself; the padding is dropped by cutting the decode at
  the track's duration, which `engine.decode` does (an MP4 declares its length exactly).
  Apple's decoders and DAWs read the same edit list.
- ALAC: lossless, no priming; the last packet is shorter. Decoding gives the samples back
  bit for bit: 16-bit as s16p, 24-bit as s32p (the 24 bits in the top of an int32).

Inputs are (C, n) float32 blocks at the output rate, already clip-handled by `engine.writers`.
The file is written to a temporary by the caller and moved into place by it (atomic).
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from engine.errors import DemixerError

# AAC bit rates offered (kbit/s); NI's stem files use 256, iTunes Plus 256.
AAC_BITRATES = (64, 96, 128, 160, 192, 224, 256, 320)
AAC_DEFAULT_BITRATE = 256
_ALAC_FORMATS = {"int16": "s16p", "int24": "s32p"}
# Tags copied from an input to its stem file, as FFmpeg names them (the ipod muxer writes
# them as iTunes atoms: title as ©nam, artist as ©ART, ...), so Traktor lists the song.
COPIED_TAGS = ("title", "artist", "album_artist", "album", "genre", "date", "track", "disc",
               "composer", "comment", "copyright")
_LAYOUTS = {1: "mono", 2: "stereo"}


def _planar_ints(block: np.ndarray, sample_format: str) -> np.ndarray:
    """(C, n) float32 -> (C, n) int16, or int32 holding 24-bit samples in its top bits (ALAC's
    s32p): scaled by 2**(bits-1), rounded, clipped to [-1, 1), as `engine.writers._to_int`."""
    bits = 16 if sample_format == "int16" else 24
    full = 2.0 ** (bits - 1)
    ints = np.clip(np.rint(block.astype(np.float64) * full), -full, full - 1)
    if bits == 16:
        return np.ascontiguousarray(ints, np.int16)
    return np.ascontiguousarray(ints.astype(np.int32) << 8)


class M4aWriter:
    """`streams` audio streams of one codec ("aac" or "alac") in one MP4 file.

    write(stream, block) takes (C, n) float32 blocks; finish() flushes the encoders and
    writes the index (`moov`, at the end of the file, after `mdat`); close() always.
    FFmpeg marks the first stream enabled and the others disabled in their track headers,
    which is what NI's stem files do (the master plays in players that know no stems)."""

    def __init__(self, path: Path, codec: str, rate: int, channels: int, *, streams: int = 1,
                 sample_format: str = "int16", bitrate_kbps: int = AAC_DEFAULT_BITRATE,
                 tags: Mapping[str, str] | None = None) -> None:
        if channels not in _LAYOUTS:
            raise DemixerError(f"{path} cannot be written: {codec.upper()} files here hold 1 "
                               f"or 2 channels, not {channels}.")
        self._codec, self._rate, self._sample_format = codec, rate, sample_format
        self._container = av.open(str(path), "w", format="ipod",
                                  options={"movie_timescale": str(rate)})
        self._closed = False
        for key, value in (tags or {}).items():
            self._container.metadata[key] = value
        self._streams: list[av.AudioStream] = []
        self._pts = [0] * streams
        for _ in range(streams):
            stream = self._container.add_stream(codec, rate=rate, layout=_LAYOUTS[channels])
            assert isinstance(stream, av.AudioStream)
            if codec == "aac":
                stream.bit_rate = bitrate_kbps * 1000
            else:
                stream.codec_context.format = av.AudioFormat(_ALAC_FORMATS[sample_format])
            self._streams.append(stream)

    def _frame(self, block: np.ndarray, stream: int) -> av.AudioFrame:
        layout = _LAYOUTS[block.shape[0]]
        if self._codec == "aac":
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block, np.float32),
                                               format="fltp", layout=layout)
        else:
            frame = av.AudioFrame.from_ndarray(_planar_ints(block, self._sample_format),
                                               format=_ALAC_FORMATS[self._sample_format],
                                               layout=layout)
        frame.sample_rate = self._rate
        frame.time_base = Fraction(1, self._rate)
        frame.pts = self._pts[stream]
        self._pts[stream] += block.shape[1]
        return frame

    def write(self, stream: int, block: np.ndarray) -> None:
        if block.shape[1] == 0:
            return
        for packet in self._streams[stream].encode(self._frame(block, stream)):
            self._container.mux(packet)

    def finish(self) -> None:
        for stream in self._streams:
            for packet in stream.encode(None):
                self._container.mux(packet)
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._container.close()


def read_tags(path: Path) -> dict[str, str]:
    """The tags of an audio file worth copying (`COPIED_TAGS`), {} if it cannot be read."""
    try:
        with av.open(str(path)) as container:
            found = {k.lower(): v for k, v in container.metadata.items()}
            if container.streams.audio:  # Ogg and Opus keep tags on the stream
                found |= {k.lower(): v for k, v in container.streams.audio[0].metadata.items()
                          if k.lower() not in found}
    except (av.FFmpegError, OSError, UnicodeDecodeError):
        return {}
    return {k: str(found[k]) for k in COPIED_TAGS if found.get(k)}


class M4aEncoder:
    """`engine.writers`' encoder protocol over one stream of an M4aWriter (a `.m4a` file)."""

    def __init__(self, path: Path, codec: str, rate: int, channels: int, sample_format: str,
                 bitrate_kbps: int) -> None:
        self._writer = M4aWriter(path, codec, rate, channels, sample_format=sample_format,
                                 bitrate_kbps=bitrate_kbps)

    def write(self, block: np.ndarray) -> None:
        self._writer.write(0, block)

    def finish(self) -> None:
        self._writer.finish()

    def close(self) -> None:
        self._writer.close()
