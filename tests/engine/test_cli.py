"""`demixer separate` as a user runs it: bad files, unusual files, batches, exit codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engine.cli import main
from tests.engine.audio_files import (
    sine_mix,
    truncated_copy,
    write_random_bytes,
    write_soundfile,
    write_text,
    write_wav,
    write_with_av,
)

STEMS = ["drums", "bass", "other", "vocals", "guitar", "piano"]


def _run(repo: Path, out: Path, *files: Path | str, extra: tuple[str, ...] = ()) -> int:
    return main(["separate", *map(str, files), "--repo", str(repo), "-o", str(out),
                 "--backend", "torch", "--shifts", "0", *extra])


def _nan_wav(path: Path) -> Path:
    audio = sine_mix(1.0, 44100)
    audio[0, 1000] = np.nan
    audio[1, 2000] = np.inf
    return write_soundfile(path, audio, 44100, subtype="FLOAT")


BAD = {
    "missing": lambda d: d / "nope.wav",
    "directory": lambda d: (d / "folder.wav").mkdir() or d / "folder.wav",
    "empty": lambda d: (d / "empty.mp3").write_bytes(b"") or d / "empty.mp3",
    "text": lambda d: write_text(d / "notes.wav"),
    "random": lambda d: write_random_bytes(d / "noise.flac"),
    "truncated_mp3": lambda d: truncated_copy(
        write_soundfile(d / "full.mp3", sine_mix(2.0, 44100), 44100, format="MP3"),
        d / "cut.mp3", keep=0.002),
    "nan_inf": lambda d: _nan_wav(d / "nan.wav"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_input_is_one_line_naming_the_file(kind: str, tiny_repo: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    src = BAD[kind](tmp_path)
    out = tmp_path / "out"
    assert _run(tiny_repo, out, src) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert str(src) in err[0] and "Traceback" not in err[0]
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


def test_batch_goes_on_past_a_bad_file(tiny_repo: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    good = write_wav(tmp_path / "good.wav", sine_mix(1.0, 44100), 44100)
    bad = write_text(tmp_path / "bad.mp3")
    assert _run(tiny_repo, tmp_path / "out", bad, good) == 1
    assert sorted(p.stem for p in (tmp_path / "out/htdemucs_6s/good").iterdir()) == sorted(STEMS)
    assert "bad.mp3" in capsys.readouterr().err


def _unusual(d: Path) -> dict[str, tuple[Path, int, int]]:
    """name -> (file, its rate, its frames)."""
    loud = sine_mix(2.0, 44100) * 3.0 + 0.4  # beyond +-1.0 and a DC offset
    files = {
        "short": (write_wav(d / "short.wav", sine_mix(0.4, 44100), 44100), 44100, 17640),
        "silence": (write_wav(d / "silence.wav", np.zeros((2, 44100), np.float32), 44100),
                    44100, 44100),
        "loud_dc": (write_soundfile(d / "loud.wav", loud, 44100, subtype="FLOAT"), 44100, 88200),
        "8ch_96k": (write_wav(d / "surround.wav", sine_mix(1.0, 96000, channels=8), 96000),
                    96000, 96000),
        "8k_mono": (write_wav(d / "phone.wav", sine_mix(1.5, 8000, channels=1), 8000),
                    8000, 12000),
        "unicode": (write_wav(d / "Café del Mar – 夜 song.wav", sine_mix(1.0, 44100), 44100),
                    44100, 44100),
        "m4a": (write_with_av(d / "track.m4a", sine_mix(1.0, 48000), 48000, codec="aac"),
                48000, -1),
    }
    return files


def test_unusual_inputs_work_at_their_own_rate_and_length(tiny_repo: Path,
                                                          tmp_path: Path) -> None:
    files = _unusual(tmp_path)
    out = tmp_path / "out"
    assert _run(tiny_repo, out, *(f for f, _, _ in files.values())) == 0
    for src, rate, frames in files.values():
        for stem in STEMS:
            info = sf.info(out / "htdemucs_6s" / src.stem / f"{stem}.wav")
            assert info.samplerate == rate and info.channels == 2
            if frames >= 0:
                assert info.frames == frames, (src.name, info.frames)
    silent = sf.read(out / "htdemucs_6s/silence/vocals.wav")[0]
    assert np.all(np.isfinite(silent))


def test_existing_stems_are_never_overwritten_without_flag(tiny_repo: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    src = write_wav(tmp_path / "song.wav", sine_mix(1.0, 44100), 44100)
    out = tmp_path / "out"
    vocals = out / "htdemucs_6s/song/vocals.wav"
    vocals.parent.mkdir(parents=True)
    vocals.write_bytes(b"my precious take")
    assert _run(tiny_repo, out, src) == 1
    assert vocals.read_bytes() == b"my precious take"
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in vocals.parent.iterdir()) == ["vocals.wav"]
    assert _run(tiny_repo, out, src, extra=("--overwrite",)) == 0
    assert sf.info(vocals).frames == 44100


def test_two_stems_mix_formats_and_template(tiny_repo: Path, tmp_path: Path) -> None:
    src = write_wav(tmp_path / "song.wav", sine_mix(1.0, 44100), 44100)
    out = tmp_path / "out"
    assert _run(tiny_repo, out, src, extra=("--two-stems", "vocals", "--flac", "--int24",
                                            "--filename", "{track}-{stem}.{ext}")) == 0
    files = sorted(p.name for p in (out / "htdemucs_6s").iterdir())
    assert files == ["song-no_vocals.flac", "song-vocals.flac"]
    assert sf.info(out / "htdemucs_6s/song-vocals.flac").subtype == "PCM_24"
    out2 = tmp_path / "out2"
    assert _run(tiny_repo, out2, src, extra=("--mix", "instrumental=drums+bass+other",
                                             "--float32", "--clip-mode", "none")) == 0
    folder = out2 / "htdemucs_6s/song"
    parts = sum(sf.read(folder / f"{s}.wav", dtype="float32")[0] for s in ("drums", "bass",
                                                                           "other"))
    mix = sf.read(folder / "instrumental.wav", dtype="float32")[0]
    np.testing.assert_allclose(mix, parts, atol=1e-6)


@pytest.mark.parametrize("args", [
    ["separate"],
    ["separate", "x.wav", "--shifts", "many"],
    ["separate", "x.wav", "--flac", "--float32"],
    ["separate", "x.wav", "--mix", "nonsense"],
    ["separate", "x.wav", "--backend", "coreml"],
    ["separate", "x.wav", "-d", "cuda"],
])
def test_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(args))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip()


def test_coreml_off_macos_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["separate", "x.wav", "--backend", "coreml"]) == 2
    assert capsys.readouterr().err.strip() == (
        "demixer: CoreML needs macOS 13 or later; use --backend torch")


def test_make_test_model_command(tmp_path: Path) -> None:
    from demucs.pretrained import get_model

    assert main(["make-test-model", "--name", "htdemucs", "--out", str(tmp_path),
                 "--tiny", "--seed", "4"]) == 0
    model = get_model("htdemucs", repo=tmp_path)
    assert model.sources == ["drums", "bass", "other", "vocals"]


def test_fast_bf16_mode_stays_within_40_db_of_exact(tiny_repo: Path, tmp_path: Path) -> None:
    src = write_wav(tmp_path / "song.wav", sine_mix(3.0, 44100), 44100)
    for precision in ("fp32", "bf16"):
        assert _run(tiny_repo, tmp_path / precision, src,
                    extra=("--precision", precision, "--float32")) == 0
    for stem in STEMS:
        exact = sf.read(tmp_path / f"fp32/htdemucs_6s/song/{stem}.wav")[0]
        fast = sf.read(tmp_path / f"bf16/htdemucs_6s/song/{stem}.wav")[0]
        snr = 10 * np.log10(np.sum(exact**2) / np.sum((fast - exact) ** 2))
        assert 40 <= snr < 120, (stem, snr)  # < 120: bf16 really ran, it is not fp32


def test_folders_skip_apple_double_files_and_an_empty_folder_fails_alone(
        tiny_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    album, empty = tmp_path / "album", tmp_path / "empty"
    album.mkdir()
    empty.mkdir()
    write_wav(album / "song.wav", sine_mix(1.0, 44100), 44100)
    (album / "._song.wav").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    assert _run(tiny_repo, tmp_path / "out", album, empty) == 1
    assert sorted(p.stem for p in (tmp_path / "out/htdemucs_6s/song").iterdir()) == sorted(STEMS)
    [line] = capsys.readouterr().err.strip().splitlines()
    assert str(empty) in line  # the AppleDouble file was never tried


def test_two_inputs_with_one_name_get_their_own_folders(tiny_repo: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    """`a/song.wav b/song.flac`: never one output folder for both (data loss 2)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_wav(tmp_path / "a/song.wav", sine_mix(1.0, 44100, seed=1), 44100)
    second = write_soundfile(tmp_path / "b/song.flac", sine_mix(1.0, 44100, seed=2), 44100)
    out = tmp_path / "out"
    for extra in ((), ("--overwrite",)):  # the rerun replaces each folder by its own input
        assert _run(tiny_repo, out, first, second, extra=extra) == 0
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"demixer: {second} has the same name as {first}: its stems go to "
                       "'song (2)'."]
        one = sf.read(out / "htdemucs_6s/song/vocals.wav")[0]
        two = sf.read(out / "htdemucs_6s/song (2)/vocals.wav")[0]
        assert one.shape == two.shape and not np.array_equal(one, two)


def test_control_characters_in_names_are_escaped(tiny_repo: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    src = write_text(tmp_path / "evil\nname\x1b[31m.wav")
    assert _run(tiny_repo, tmp_path / "out", src) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "evil\\nname\\x1b[31m.wav" in line and "\x1b" not in line


def test_a_progress_bar_on_a_terminal(tiny_repo: Path, tmp_path: Path) -> None:
    """Under a pseudo-terminal that reports a size of 0 x 0 (as `script` does), the bar
    used to be invisible."""
    import os
    import pty
    import subprocess
    import sys

    src = write_wav(tmp_path / "song.wav", sine_mix(12.0, 44100), 44100)
    parent, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "separate", str(src), "--repo", str(tiny_repo),
         "-o", str(tmp_path / "out"), "--backend", "torch", "--shifts", "0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=child,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    os.close(child)
    seen = b""
    while True:
        try:
            data = os.read(parent, 4096)
        except OSError:  # the child closed its end
            break
        if not data:
            break
        seen += data
    assert proc.wait(timeout=300) == 0
    os.close(parent)
    text = seen.decode("utf-8", "replace")
    assert "song.wav:" in text and "%|" in text and "separating" in text, text[:500]
