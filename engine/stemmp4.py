"""Native Instruments Stems (`.stem.mp4`): the master and four stems in one MP4, for Traktor.

The layout, as NI's own `ni-stem` tool writes it (MP4Box `-add master#ID=Z -add stem#ID=Z:disable
... -udta 0:type=stem:src=...`; read in the `stemgen` package, which ships that tool):

- five audio tracks of one codec: AAC (256 kbit/s, NI's usual) or ALAC (16/24-bit, lossless);
  track 1 is the master (the original mix) and is enabled, tracks 2-5 are the stems, marked
  disabled in their track headers (`tkhd` flags), so a player that knows no stems plays the
  master only;
- a box `stem` in `moov/udta` whose payload is UTF-8 JSON: `version` 1, `mastering_dsp` (the
  compressor and limiter Traktor applies to the summed stems; NI's defaults, both disabled)
  and `stems`, four objects `{"name", "color"}` in track order.

FFmpeg (`engine.m4a`) writes the tracks with `moov` at the end of the file, after `mdat`.
The `stem` box is added by rewriting `moov` only: its size and `udta`'s grow, and nothing
moves in `mdat`, so the chunk offsets (`stco`/`co64`, which point into `mdat`) stay right.
All of it happens in the hidden temporary; the file appears under its name only complete.

Models with other stems are mapped onto NI's four slots by a `StemMap` (default for
htdemucs_6s: drums; bass; other+guitar+piano; vocals), written `drums;bass;other+guitar+
piano;vocals`, a slot optionally named: `drums;bass;Melody=other+guitar+piano;vocals`.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import av
import numpy as np

from engine.atomicio import Staged, commit_all, discard_temps, fsync_path
from engine.errors import CancelFlag, DemixerError, OutputExistsError
from engine.m4a import M4aWriter
from engine.resample import resampled_length
from engine.writers import (
    MixSignal,
    OutputFormat,
    io_reason,
    peak_of,
    prevent_clip,
    rescale_divisor,
    staged_temp,
)

STEM_MP4_SUFFIX = ".stem.mp4"
NI_SLOTS = 4
# NI's colours for the four slots (ni-stem's defaults): green, orange, pink, blue.
NI_COLORS = ("#009E73", "#D55E00", "#CC79A7", "#56B4E9")
# NI's default mastering DSP, as ni-stem's metadata.json ships it (both stages disabled, so
# Traktor plays the stems' sum untouched); the floats are the float32 values NI stores.
NI_MASTERING: dict[str, Any] = {
    "compressor": {"enabled": False, "ratio": 3, "output_gain": 0.5,
                   "release": 0.300000011920929, "attack": 0.003000000026077032,
                   "input_gain": 0.5, "threshold": 0, "hp_cutoff": 300, "dry_wet": 50},
    "limiter": {"enabled": False, "release": 0.05000000074505806, "threshold": 0,
                "ceiling": -0.3499999940395355},
}
_SLOT_ORDER = ("drums", "bass", "other", "vocals")  # NI's slot order


@dataclass(frozen=True)
class StemSlot:
    """One of NI's four stems: its name in Traktor, its colour, and the model's stems summed."""

    name: str
    color: str
    sources: tuple[str, ...]


StemMap = tuple[StemSlot, ...]


def default_stem_map(sources: Sequence[str]) -> StemMap:
    """drums, bass, other (+ every stem not among NI's four, e.g. guitar and piano), vocals."""
    missing = [s for s in _SLOT_ORDER if s not in sources]
    if missing:
        raise DemixerError(f"This model has no {missing[0]} stem, so there is no default "
                           f"mapping to NI's four stems; give one with --stem-map.")
    extra = tuple(s for s in sources if s not in _SLOT_ORDER)
    groups = [("drums",), ("bass",), ("other", *extra), ("vocals",)]
    return tuple(StemSlot(g[0].title(), NI_COLORS[i], g) for i, g in enumerate(groups))


def format_stem_map(slots: StemMap) -> str:
    """The text form `parse_stem_map` reads; a name is written only where it is not the
    first stem's own title."""
    texts = []
    for slot in slots:
        parts = "+".join(slot.sources)
        texts.append(parts if slot.name == slot.sources[0].title() else f"{slot.name}={parts}")
    return ";".join(texts)


def parse_stem_map(text: str, sources: Sequence[str]) -> StemMap:
    """'drums;bass;other+guitar+piano;vocals' (optionally 'NAME=a+b' per slot) -> four slots.

    Raises DemixerError (one sentence) unless there are four slots, each of known stems, no
    stem in two slots."""
    groups = [g.strip() for g in text.split(";")]
    if len(groups) != NI_SLOTS or not all(groups):
        raise DemixerError(f"--stem-map '{text}' should name NI's four stems in order, "
                           "separated by ';', e.g. drums;bass;other+guitar+piano;vocals.")
    slots: list[StemSlot] = []
    used: set[str] = set()
    for i, group in enumerate(groups):
        name, _, parts_text = group.rpartition("=")
        parts = tuple(p.strip() for p in parts_text.split("+"))
        unknown = [p for p in parts if p not in sources]
        if unknown:
            raise DemixerError(f"--stem-map '{text}' names {unknown[0] or 'an empty stem'}, "
                               f"which this model does not have; it has {', '.join(sources)}.")
        twice = [p for p in parts if p in used]
        if twice:
            raise DemixerError(f"--stem-map '{text}' puts {twice[0]} in two stems; give each "
                               "stem one place.")
        used.update(parts)
        slots.append(StemSlot(name.strip() or parts[0].title(), NI_COLORS[i], parts))
    return tuple(slots)


def stem_metadata(slots: StemMap) -> dict[str, Any]:
    """The `stem` box's JSON object."""
    return {"version": 1, "mastering_dsp": NI_MASTERING,
            "stems": [{"name": s.name, "color": s.color} for s in slots]}


# ---------------------------------------------------------------- writing -----------------

@dataclass(frozen=True)
class StemMp4Audio:
    """What goes into a stem file: the master ((C, N) float32, the original mix) and each
    model stem by name ((C, N) float32 array-likes), all at `rate` Hz."""

    master: Any
    stems: Mapping[str, Any]
    rate: int
    tags: Mapping[str, str] | None = None  # title, artist... (`engine.m4a.COPIED_TAGS`)


def write_stem_mp4(path: Path, audio: StemMp4Audio, slots: StemMap, fmt: OutputFormat, *,
                   rate_out: int | None = None, frames_out: int | None = None,
                   overwrite: bool = False, cancel: CancelFlag | None = None) -> Path:
    """Write `path` (a `.stem.mp4`) whole or not at all; same errors as
    `engine.writers.write_audio` (OutputExistsError without `overwrite`, DemixerError,
    Cancelled), after which `path` is untouched and no temporary remains."""
    temp = stage_stem_mp4(path, audio, slots, fmt, rate_out=rate_out, frames_out=frames_out,
                          overwrite=overwrite, cancel=cancel)
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


def stage_stem_mp4(path: Path, audio: StemMp4Audio, slots: StemMap, fmt: OutputFormat, *,
                   rate_out: int | None = None, frames_out: int | None = None,
                   overwrite: bool = False, cancel: CancelFlag | None = None) -> Path:
    """The complete stem file in a hidden temporary beside `path` (returned, fsynced).

    `fmt.container` is "aac" (at `fmt.aac_bitrate`) or "alac" (`fmt.sample_format` int16 or
    int24); rate_out defaults to `fmt.rate_for(audio.rate)`, frames_out to the resampled
    length. With clip mode "rescale" all five tracks share one divisor (from the loudest),
    so the stems still add up to the master in Traktor."""
    path = Path(path)
    if fmt.container not in ("aac", "alac"):
        raise DemixerError(f"{path} cannot be written: NI stem files hold AAC or ALAC, "
                           f"not {fmt.container.upper()}.")
    rate_out = rate_out or fmt.rate_for(audio.rate)
    fmt.validate(rate_out)
    frames = int(audio.master.shape[1])
    frames_out = frames_out or resampled_length(frames, audio.rate, rate_out)
    signals = [MixSignal([audio.master], (1.0,), audio.rate, rate_out, frames_out)]
    for slot in slots:
        parts = [audio.stems[s] for s in slot.sources]
        signals.append(MixSignal(parts, (1.0,) * len(parts), audio.rate, rate_out, frames_out))
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists already: pass --overwrite to replace it.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _write_temp(path, signals, slots, fmt, cancel, audio.tags)
    except (OSError, av.FFmpegError) as err:
        raise DemixerError(f"{path} cannot be written ({io_reason(err, path)}).") from None


def _write_temp(path: Path, signals: list[MixSignal], slots: StemMap, fmt: OutputFormat,
                cancel: CancelFlag | None, tags: Mapping[str, str] | None) -> Path:
    divisor = np.float32(1.0)
    if fmt.clip_mode == "rescale":
        divisor = rescale_divisor(max(peak_of(s.blocks(cancel, path)) for s in signals))
    first = signals[0]
    with staged_temp(path) as tmp:
        writer = M4aWriter(tmp, fmt.container, first.rate_out, first.channels,
                           streams=len(signals), sample_format=fmt.sample_format,
                           bitrate_kbps=fmt.aac_bitrate, tags=tags)
        try:
            # NB: the tracks advance in step, so the muxer interleaves them with little buffering
            for blocks in zip(*(s.blocks(cancel, path) for s in signals), strict=True):
                for i, block in enumerate(blocks):
                    writer.write(i, prevent_clip(block, fmt.clip_mode, divisor))
            writer.finish()
        finally:
            writer.close()
        payload = json.dumps(stem_metadata(slots), ensure_ascii=False).encode("utf-8")
        add_moov_udta_box(tmp, b"stem", payload)
        fsync_path(tmp)
    return tmp


# ---------------------------------------------------------------- the `stem` box ----------

@dataclass(frozen=True)
class _Box:
    kind: bytes
    offset: int
    size: int
    header: int  # 8, or 16 with a 64-bit size


def _read_boxes(file: BinaryIO, start: int, end: int) -> list[_Box]:
    """The boxes one after another in [start, end) of `file` (ISO/IEC 14496-12, 4.2)."""
    boxes, offset = [], start
    while offset + 8 <= end:
        file.seek(offset)
        size, kind = struct.unpack(">I4s", file.read(8))
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", file.read(8))[0], 16
        elif size == 0:
            size = end - offset
        if size < header or offset + size > end:
            raise ValueError(f"a damaged MP4 box {kind!r} at byte {offset}")
        boxes.append(_Box(kind, offset, size, header))
        offset += size
    return boxes


def _box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(body), kind) + body


def _with_child(parent: bytes, kind: bytes, child: bytes) -> bytes:
    """`parent` (a whole container box with an 8-byte header) with `child` appended to the
    end of its body; its own size grows by the child's."""
    return _box(kind, parent[8:] + child)


def add_moov_udta_box(path: Path, kind: bytes, payload: bytes) -> None:
    """Add the box `kind` (payload as is) to `moov/udta` of the MP4 at `path`, in place.

    Only for a file whose `moov` is the last box, after `mdat` (FFmpeg's default layout): then
    no sample data moves and the chunk offsets need no change; anything else is refused."""
    with open(path, "r+b") as file:
        end = file.seek(0, 2)
        top = _read_boxes(file, 0, end)
        moov = top[-1] if top else None
        if moov is None or moov.kind != b"moov" or moov.header != 8 or not any(
                b.kind == b"mdat" for b in top[:-1]):
            raise ValueError(f"{path}: the MP4 index is not at the end of the file")
        children = _read_boxes(file, moov.offset + 8, moov.offset + moov.size)
        body = b""
        new_box = _box(kind, payload)
        udta = next((c for c in children if c.kind == b"udta" and c.header == 8), None)
        for child in children:
            file.seek(child.offset)
            data = file.read(child.size)
            body += _with_child(data, b"udta", new_box) if child is udta else data
        if udta is None:
            body += _box(b"udta", new_box)
        file.seek(moov.offset)
        file.write(_box(b"moov", body))
        file.truncate()
