"""NI Stems (engine.stemmp4): five streams, the `stem` box in moov/udta read back by an
independent box walker (written here from ISO/IEC 14496-12, not the product's), each stream
decoded and compared with what went in, the stem mapping rule and its mistakes."""

from __future__ import annotations

import json
import struct
import threading
from pathlib import Path

import av
import numpy as np
import pytest

from engine.errors import Cancelled, DemixerError, OutputExistsError
from engine.stemmp4 import (
    NI_COLORS,
    StemMp4Audio,
    default_stem_map,
    format_stem_map,
    parse_stem_map,
    write_stem_mp4,
)
from engine.writers import OutputFormat
from tests.engine.audio_files import sine_mix
from tests.engine.test_m4a import AAC_MIN_SNR_DB, snr_db

RATE = 44100
SIX = ["drums", "bass", "other", "vocals", "guitar", "piano"]
_CONTAINERS = {b"moov", b"trak", b"udta", b"mdia", b"minf", b"stbl", b"edts"}


def walk(data: bytes, start: int = 0, end: int | None = None,
         parent: str = "") -> list[tuple[str, int, int, bytes]]:
    """Every box as (path like 'moov/udta/stem', offset, size, payload), depth first."""
    end = len(data) if end is None else end
    out, offset = [], start
    while offset < end:
        size, kind = struct.unpack(">I4s", data[offset:offset + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[offset + 8:offset + 16])[0], 16
        assert 8 <= size <= end - offset, f"box {kind!r} at {offset} overruns its parent"
        path = f"{parent}/{kind.decode('latin-1')}".lstrip("/")
        out.append((path, offset, size, data[offset + header:offset + size]))
        if kind in _CONTAINERS:
            out += walk(data, offset + header, offset + size, path)
        offset += size
    assert offset == end, "boxes do not fill their parent exactly"
    return out


def _stems(frames: int) -> dict[str, np.ndarray]:
    return {name: sine_mix(frames / RATE, RATE, amplitude=0.15, seed=i)
            for i, name in enumerate(SIX)}


def _write(tmp_path: Path, fmt: OutputFormat, frames: int = 3 * RATE + 17,
           **kwargs: object) -> tuple[Path, np.ndarray, dict[str, np.ndarray]]:
    stems = _stems(frames)
    master = sum(stems.values())
    assert isinstance(master, np.ndarray)
    path = write_stem_mp4(tmp_path / "song.stem.mp4", StemMp4Audio(master, stems, RATE),
                          default_stem_map(SIX), fmt, **kwargs)  # type: ignore[arg-type]
    return path, master, stems


def _decode_all(path: Path) -> list[tuple[np.ndarray, int, int]]:
    with av.open(str(path)) as container:
        out = []
        for stream in container.streams.audio:
            samples = [f.to_ndarray() for f in container.decode(stream)]
            assert stream.duration is not None and stream.time_base is not None
            declared = round(stream.duration * stream.time_base * stream.rate)
            out.append((np.concatenate(samples, axis=1), stream.rate, declared))
            container.seek(0)
        return out


def test_five_streams_and_the_stem_box(tmp_path: Path) -> None:
    path, _, _ = _write(tmp_path, OutputFormat("aac"))
    boxes = walk(path.read_bytes())
    paths = [b[0] for b in boxes]
    assert paths.count("moov/trak") == 5
    stem = [b for b in boxes if b[0] == "moov/udta/stem"]
    assert len(stem) == 1
    meta = json.loads(stem[0][3].decode("utf-8"))
    assert meta["version"] == 1
    assert meta["stems"] == [{"name": "Drums", "color": "#009E73"},
                             {"name": "Bass", "color": "#D55E00"},
                             {"name": "Other", "color": "#CC79A7"},
                             {"name": "Vocals", "color": "#56B4E9"}]
    dsp = meta["mastering_dsp"]
    assert dsp["limiter"]["enabled"] is False and dsp["compressor"]["enabled"] is False
    assert set(dsp["limiter"]) == {"enabled", "release", "threshold", "ceiling"}
    assert dsp["limiter"]["ceiling"] == pytest.approx(-0.35)
    # track 1 (the master) enabled, the stems disabled: tkhd flags bit 0
    flags = [int.from_bytes(b[3][1:4], "big") for b in boxes if b[0] == "moov/trak/tkhd"]
    assert [f & 1 for f in flags] == [1, 0, 0, 0, 0]
    # moov after mdat, and every chunk offset still points inside mdat
    mdat = next(b for b in boxes if b[0] == "mdat")
    moov = next(b for b in boxes if b[0] == "moov")
    assert mdat[1] + mdat[2] <= moov[1]
    for _, _, _, payload in (b for b in boxes if b[0].endswith("/stco")):
        count = struct.unpack(">I", payload[4:8])[0]
        offsets = struct.unpack(f">{count}I", payload[8:8 + 4 * count])
        assert all(mdat[1] < o < mdat[1] + mdat[2] for o in offsets)
    assert path.read_bytes()[4:12] == b"ftypM4A "


def test_aac_streams_decode_to_the_master_and_mapped_stems(tmp_path: Path) -> None:
    frames = 3 * RATE + 17
    path, master, stems = _write(tmp_path, OutputFormat("aac"), frames=frames)
    slots = default_stem_map(SIX)
    expected = [master] + [sum(stems[s] for s in slot.sources) for slot in slots]
    peak = max(float(np.abs(e).max()) for e in expected)
    divisor = max(1.01 * peak, 1.0)  # rescale: one divisor for all five
    for (samples, rate, declared), want in zip(_decode_all(path), expected, strict=True):
        assert rate == RATE and declared == frames and 0 <= samples.shape[1] - frames < 1024
        assert snr_db(np.asarray(want) / divisor, samples[:, :frames]) > AAC_MIN_SNR_DB


@pytest.mark.parametrize(("sample_format", "bits"), [("int16", 16), ("int24", 24)])
def test_alac_streams_are_bit_exact(tmp_path: Path, sample_format: str, bits: int) -> None:
    frames = RATE + 5
    fmt = OutputFormat("alac", sample_format, clip_mode="clamp")  # type: ignore[arg-type]
    path, master, stems = _write(tmp_path, fmt, frames=frames)
    slots = default_stem_map(SIX)
    expected = [master] + [np.sum([stems[s] for s in slot.sources], axis=0, dtype=np.float32)
                           for slot in slots]
    full = 2.0 ** (bits - 1)
    for (samples, rate, declared), want in zip(_decode_all(path), expected, strict=True):
        ints = np.clip(np.rint(np.clip(want, -0.99, 0.99).astype(np.float64) * full),
                       -full, full - 1)
        got = samples >> 8 if bits == 24 else samples
        assert rate == RATE and declared == frames
        np.testing.assert_array_equal(got, ints)


def test_existing_file_is_kept_and_cancel_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "song.stem.mp4"
    target.write_bytes(b"a DJ's file")
    with pytest.raises(OutputExistsError):
        _write(tmp_path, OutputFormat("aac"))
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        _write(tmp_path, OutputFormat("aac"), overwrite=True, cancel=cancel)
    assert target.read_bytes() == b"a DJ's file" and sorted(tmp_path.iterdir()) == [target]
    _write(tmp_path, OutputFormat("alac"), overwrite=True)
    assert [b[0] for b in walk(target.read_bytes())].count("moov/trak") == 5


def test_only_aac_or_alac(tmp_path: Path) -> None:
    with pytest.raises(DemixerError, match="AAC or ALAC, not FLAC"):
        _write(tmp_path, OutputFormat("flac"))
    assert list(tmp_path.iterdir()) == []


def test_default_mapping_rule() -> None:
    six = default_stem_map(SIX)
    assert [s.sources for s in six] == [("drums",), ("bass",), ("other", "guitar", "piano"),
                                        ("vocals",)]
    assert [s.color for s in six] == list(NI_COLORS)
    assert format_stem_map(six) == "drums;bass;other+guitar+piano;vocals"
    four = default_stem_map(["drums", "bass", "other", "vocals"])
    assert [s.sources for s in four] == [("drums",), ("bass",), ("other",), ("vocals",)]
    with pytest.raises(DemixerError, match="no vocals stem"):
        default_stem_map(["drums", "bass", "other"])


def test_edited_mapping_and_names() -> None:
    slots = parse_stem_map(" drums ; bass+piano ; Melody=other+guitar ; vocals", SIX)
    assert [(s.name, s.sources) for s in slots] == [
        ("Drums", ("drums",)), ("Bass", ("bass", "piano")),
        ("Melody", ("other", "guitar")), ("Vocals", ("vocals",))]
    assert format_stem_map(slots) == "drums;bass+piano;Melody=other+guitar;vocals"
    assert parse_stem_map(format_stem_map(slots), SIX) == slots


@pytest.mark.parametrize(("text", "words"), [
    ("drums;bass;other", "NI's four stems"),
    ("drums;bass;;other;vocals", "NI's four stems"),
    ("drums;bass;other+flute;vocals", "names flute, which this model does not have"),
    ("drums;bass;other+drums;vocals", "puts drums in two stems"),
    ("drums;bass;other+;vocals", "an empty stem"),
])
def test_mapping_mistakes_are_one_sentence(text: str, words: str) -> None:
    with pytest.raises(DemixerError, match=words) as info:
        parse_stem_map(text, SIX)
    assert str(info.value).count(".") >= 1 and "\n" not in str(info.value)


def test_the_inputs_tags_go_into_the_stem_file(tmp_path: Path) -> None:
    import soundfile as sf

    from engine.m4a import read_tags

    song = tmp_path / "in.flac"
    with sf.SoundFile(str(song), "w", RATE, 2, format="FLAC") as f:
        f.title, f.artist, f.album = "Strobe", "deadmau5", "For Lack of a Better Name"
        f.write(np.zeros((100, 2), np.float32))
    tags = read_tags(song)
    assert tags == {"title": "Strobe", "artist": "deadmau5",
                    "album": "For Lack of a Better Name"}
    assert read_tags(tmp_path / "missing.wav") == {}
    stems = _stems(RATE)
    master = np.sum(list(stems.values()), axis=0, dtype=np.float32)
    path = write_stem_mp4(tmp_path / "x.stem.mp4", StemMp4Audio(master, stems, RATE, tags),
                          default_stem_map(SIX), OutputFormat("aac"))
    with av.open(str(path)) as container:
        assert {k: container.metadata.get(k) for k in tags} == tags
    assert [b[0] for b in walk(path.read_bytes())].count("moov/udta/meta") == 1
