"""Usage mistakes: exit 2, one line on stderr, before the model loads (issue 12)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engine.cli import main
from engine.cli import separate as cli_separate

MISTAKES: dict[str, list[str]] = {
    "unknown template field": ["--filename", "{track}/{stems}.{ext}"],
    "bad braces": ["--filename", "{track/{stem}.{ext}"],
    "template without stem": ["--filename", "{track}.{ext}"],
    "segment nan": ["--segment", "nan"],
    "segment too long": ["--segment", "30"],
    "overlap 1": ["--overlap", "1"],
    "overlap 0.999999": ["--overlap", "0.999999"],
    "overlap nan": ["--overlap", "nan"],
    "jobs 100000": ["-j", "100000"],
    "precision unknown": ["--precision", "fp8"],
    "precision of another backend": ["--precision", "fp16", "--backend", "torch"],
    "mix unknown stem": ["--mix", "karaoke=drums+banjo"],
    "mix twice": ["--mix", "a=drums+bass", "--mix", "a=vocals+other"],
    "mix named like a stem": ["--mix", "drums=bass"],
    "two-stems unknown": ["--two-stems", "banjo"],
    "shift offsets count": ["--shifts", "2", "--shift-offsets", "100"],
    "unknown model": ["-n", "htdemucs_9s"],
    "negative shifts": ["--shifts", "-1"],
}


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def load(*args: object) -> None:
        raise AssertionError("the model was loaded for a usage mistake")

    monkeypatch.setattr(cli_separate, "_load", load)


@pytest.mark.parametrize("flags", list(MISTAKES.values()), ids=list(MISTAKES))
def test_usage_mistake_is_one_line_exit_2_before_loading(
        flags: list[str], tmp_path: Path, no_model_load: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.monotonic()
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(["separate", str(tmp_path / "x.wav"), "-o", str(tmp_path / "o"),
                               "--backend", "torch", *flags]))
    assert exc.value.code == 2
    assert time.monotonic() - t0 < 1.0
    captured = capsys.readouterr()
    [line] = captured.err.strip().splitlines()
    assert line.startswith("demixer") and "Traceback" not in line, line
    assert not (tmp_path / "o").exists()


def test_out_that_is_a_file(tmp_path: Path, no_model_load: None,
                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "out").write_text("not a folder")
    assert main(["separate", "x.wav", "-o", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"demixer: -o {tmp_path / 'out'} is a file, not a folder; give a folder for the stems.")
    assert (tmp_path / "out").read_text() == "not a folder"


def test_mix_of_an_unknown_stem_in_a_local_repo_is_exit_2_before_any_file(
        tiny_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A --repo model's stems are only known once it is loaded: still exit 2, no output."""
    song = tmp_path / "song.wav"
    sf.write(song, np.zeros((44100, 2), np.float32), 44100)
    assert main(["separate", str(song), "--repo", str(tiny_repo), "-o", str(tmp_path / "o"),
                 "--backend", "torch", "--mix", "x=drums+banjo"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "banjo" in line and not (tmp_path / "o").exists()


def test_every_flag_has_help() -> None:
    import argparse

    from engine.cli import build_parser

    def check(parser: argparse.ArgumentParser, prog: str) -> int:
        count = 0
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, command in action.choices.items():
                    count += check(command, f"{prog} {name}")
            elif action.dest != "help":
                assert isinstance(action.help, str) and action.help, \
                    f"{prog} {action.option_strings or action.dest}: no help"
                count += 1
        return count

    assert check(build_parser(), "demixer") > 30


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from engine import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"demixer {__version__}"


def test_a_mistyped_command_is_not_opened_as_a_file() -> None:
    """`demixer seperate song.wav` used to open the app with two "files" (and abort, 134,
    without a display)."""
    done = subprocess.run([sys.executable, "-m", "engine.cli", "seperate", "song.wav"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "QT_QPA_PLATFORM": "",
                               "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert done.returncode == 2
    assert done.stderr.strip() == "demixer: unknown command 'seperate'; did you mean 'separate'?"


def test_models_alone_prints_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "list" in out and "download" in out


def test_argparse_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["separate", "x.wav", "--shifts", "many"])
    assert exc.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "--shifts" in line and "invalid int value" in line


def test_an_unexpected_error_outside_a_job_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    from engine.cli import models as cli_models

    def broken(args: object) -> int:
        raise RuntimeError("torch said no")

    monkeypatch.setattr(cli_models, "run_list", broken)
    assert main(["models", "list"]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("demixer models: failed unexpectedly (RuntimeError: torch said "
                           "no); the details are in ") and line.endswith("demixer.log.")
