"""`demixer models list|convert|verify|clear` and `demixer doctor`, through `engine.cli.main`.

One test converts (the tiny model, 8-bit); the others work on a copy of the session's tiny
package (tests/engine/test_convert.py) placed in the test's own DEMIXER_HOME.
"""

from __future__ import annotations

import io
import platform
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from engine.cli import main
from engine.coreml.cache import CachedPackage, cache_root
from engine.coreml.convert import ConvertOptions
from engine.store import checkpoints_dir, data_dir
from tests.engine.test_convert import load_spec, op_dtypes, session_package


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory: pytest.TempPathFactory, tiny_repo: Path) -> CachedPackage:
    return session_package(tmp_path_factory, tiny_repo, "tiny-mixed-b2",
                           ConvertOptions(batch=2))[0]


@pytest.fixture()
def converted_home(tiny_package: CachedPackage) -> Path:
    """This test's data dir, holding a copy of the tiny package as if converted here."""
    entry = cache_root() / tiny_package.entry.name
    shutil.copytree(tiny_package.entry, entry)
    return entry


@pytest.fixture()
def no_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))


def test_convert_prints_the_package_and_the_second_call_is_a_hit(
        tiny_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["models", "convert", "htdemucs_6s", "--repo", str(tiny_repo), "--compress", "8bit"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    package = Path(out.strip())
    assert package.name == "core.mlpackage" and package.is_dir()
    assert package.is_relative_to(data_dir() / "coreml")
    for stage in ("load", "trace", "convert", "optimise", "save"):
        assert f"] {stage}: " in err, stage
    assert re.search(r"htdemucs_6s: converted in [\d.]+ s; mixed precision, compression 8bit, "
                     r"batch 1; package [\d.]+ MB", err), err
    kinds = {kind for kind, _ in op_dtypes(load_spec(package))}
    assert kinds & {"constexpr_affine_dequantize", "constexpr_blockwise_shift_scale"}

    assert main(args) == 0
    out, err = capsys.readouterr()
    assert Path(out.strip()) == package
    assert "htdemucs_6s: cache hit; mixed precision, compression 8bit, batch 1" in err
    assert "] trace: " not in err


def test_convert_errors_are_one_line(tiny_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "convert", "nope"]) == 1
    assert capsys.readouterr().err.startswith("demixer: Unknown model 'nope'; choose one of")
    assert main(["models", "convert", "htdemucs_6s", "--repo", str(tiny_repo),
                 "--batch", "0"]) == 1
    assert "The batch size must be between 1 and 64, not 0." in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: exit 2 with its usage message
        main(["models", "convert", "htdemucs_6s", "--precision", "int4"])


def test_list_shows_the_catalogue_downloads_and_conversions(
        converted_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (checkpoints_dir() / "955717e8-8726e21a.th.part").write_bytes(b"x" * 2_000_000)
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    row = {line.split()[0]: line for line in out.splitlines()}
    assert re.search(r"htdemucs_6s\*\s+6\s+no\s+mixed/none/b2 \d+\.\d MB", row["htdemucs_6s*"])
    assert "no, partial 2.0 MB" in row["htdemucs"] and row["htdemucs"].rstrip().endswith("-")
    assert "htdemucs_ft" in row
    assert f"CoreML packages in {cache_root()} (1," in out


def test_verify_hashes_checkpoints_and_packages(converted_home: Path, tiny_repo: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "verify", "--repo", str(tiny_repo)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"htdemucs_6s: 5c90dfd2-\w{8}\.th: ok \(custom weights", out)
    assert f"coreml: {converted_home.name}: ok" in out

    weights = next(converted_home.rglob("weight.bin"))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert main(["models", "verify", "--repo", str(tiny_repo)]) == 1
    assert "does not match its SHA-256 (rebuilt when next used)" in capsys.readouterr().out


def test_verify_downloaded_checkpoints_against_the_catalogue(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "verify"]) == 0
    assert "htdemucs_6s: 5c90dfd2-34c22ccb.th: not downloaded" in capsys.readouterr().out
    (checkpoints_dir() / "5c90dfd2-34c22ccb.th").write_bytes(b"not the checkpoint")
    assert main(["models", "verify"]) == 1
    assert "htdemucs_6s: 5c90dfd2-34c22ccb.th: CORRUPT" in capsys.readouterr().out


def test_clear_removes_packages_and_with_all_checkpoints(
        converted_home: Path, tiny_repo: Path, no_tty: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = checkpoints_dir() / "5c90dfd2-34c22ccb.th"
    checkpoint.write_bytes(b"x" * 1000)
    assert main(["models", "clear"]) == 0  # not a terminal: nothing is asked
    out = capsys.readouterr().out
    assert f"removed {converted_home} (" in out and not converted_home.exists()
    assert checkpoint.exists()  # plain `clear` keeps the downloads
    repo_files = sorted(tiny_repo.iterdir())
    assert main(["models", "clear", "--all"]) == 0
    out = capsys.readouterr().out
    assert f"removed {checkpoint} (0.0 MB)" in out and not checkpoint.exists()
    assert sorted(tiny_repo.iterdir()) == repo_files  # a --repo folder is never touched


def test_clear_in_a_terminal_asks_first(converted_home: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    questions: list[str] = []
    monkeypatch.setattr(sys, "stdin", Terminal())
    def answer_no(question: str) -> str:
        questions.append(question)
        return "n"

    monkeypatch.setattr("builtins.input", answer_no)
    assert main(["models", "clear"]) == 0
    assert converted_home.exists()
    assert re.match(r"Remove 1 converted package\(s\) \(\d", questions[0])
    assert main(["models", "clear", "--yes"]) == 0
    assert not converted_home.exists() and len(questions) == 1


def test_doctor_reports_versions_backends_and_audio(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import coremltools

    from app.launch import main as demixer  # `demixer doctor`: the launcher adds the audio

    assert demixer(["doctor"]) == 0
    out = capsys.readouterr().out
    assert f"Python: {platform.python_version()}" in out
    assert f"torch {torch.__version__}" in out
    assert f"coremltools {coremltools.__version__}" in out
    assert f"Data: {data_dir()}" in out
    if sys.platform != "darwin":
        assert "CoreML prediction: not available (CoreML needs macOS 13 or later" in out
        assert "Backends here (--backend auto picks among them by calibration): torch fp32 " \
               "cpu, torch bf16 cpu" in out
        assert "Not available here: coreml (CoreML prediction needs macOS 13 or later)" in out
    assert "Audio output" in out
    import mlx.core as mx

    version = mx.__version__  # type: ignore[attr-defined]
    assert f"MLX: {version} on {mx.default_device()} (0 converted" in out
    monkeypatch.setattr("engine.mlx_backend.mlx_available", lambda: False)
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # as if PortAudio were missing
    assert demixer(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "Audio output: unavailable" in out and "MLX: not installed or not usable" in out
