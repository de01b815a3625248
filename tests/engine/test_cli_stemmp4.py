"""`demixer separate --stem-mp4` / `--aac` / `--alac` end to end with the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from engine.cli import main
from tests.engine.audio_files import sine_mix, write_wav
from tests.engine.test_m4a import AAC_MIN_SNR_DB, snr_db
from tests.engine.test_stemmp4 import walk


def _run(repo: Path, out: Path, song: Path, *extra: str) -> int:
    return main(["separate", str(song), "--repo", str(repo), "-o", str(out),
                 "--backend", "torch", "--shifts", "0", *extra])


def _streams(path: Path) -> list[np.ndarray]:
    out = []
    with av.open(str(path)) as container:
        for stream in container.streams.audio:
            assert stream.duration is not None and stream.time_base is not None
            frames = round(stream.duration * stream.time_base * stream.rate)
            out.append(np.concatenate([f.to_ndarray() for f in container.decode(stream)],
                                      axis=1)[:, :frames])
            container.seek(0)
    return out


def test_stem_mp4_holds_the_input_as_master_and_the_mapped_stems(
        tiny_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rate, frames = 48000, 48000 * 2 + 11
    audio = sine_mix(frames / rate, rate, amplitude=0.4)
    song = write_wav(tmp_path / "Track One.wav", audio, rate, subtype="FLOAT")
    out = tmp_path / "out"
    assert _run(tiny_repo, out, song, "--stem-mp4", "--stem-map",
                "drums;bass;Melody=other+guitar+piano;vocals") == 0
    path = out / "htdemucs_6s" / "Track One.stem.mp4"
    assert f"NI Stems file {path}" in capsys.readouterr().out
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == [path.name]
    meta = json.loads(next(b[3] for b in walk(path.read_bytes()) if b[0] == "moov/udta/stem"))
    assert [s["name"] for s in meta["stems"]] == ["Drums", "Bass", "Melody", "Vocals"]
    master, *stems = _streams(path)
    assert len(stems) == 4 and all(s.shape == (2, frames) for s in (master, *stems))
    assert snr_db(audio, master) > AAC_MIN_SNR_DB  # the original mix, at its own rate
    assert _run(tiny_repo, out, song, "--stem-mp4") == 1  # exists: never replaced
    assert "exists already" in capsys.readouterr().err


def test_alac_stems_at_the_inputs_rate(tiny_repo: Path, tmp_path: Path) -> None:
    rate = 96000
    song = write_wav(tmp_path / "hi.wav", sine_mix(1.0, rate), rate)
    out = tmp_path / "out"
    assert _run(tiny_repo, out, song, "--alac", "--int24", "--two-stems", "vocals") == 0
    folder = out / "htdemucs_6s" / "hi"
    assert sorted(p.name for p in folder.iterdir()) == ["no_vocals.m4a", "vocals.m4a"]
    with av.open(str(folder / "vocals.m4a")) as container:
        stream = container.streams.audio[0]
        assert (stream.codec_context.name, stream.rate, stream.codec_context.format.name) == (
            "alac", rate, "s32p")
    assert _streams(folder / "vocals.m4a")[0].shape == (2, rate)
    assert _run(tiny_repo, out, song, "--aac", "--aac-bitrate", "128", "-o",
                str(tmp_path / "aac")) == 0
    with av.open(str(tmp_path / "aac" / "htdemucs_6s" / "hi" / "drums.m4a")) as container:
        assert container.streams.audio[0].rate == 48000  # AAC above 48 kHz: 48 kHz
