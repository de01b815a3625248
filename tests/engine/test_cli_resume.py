"""A real `demixer separate` interrupted by kill -9, SIGTERM or Ctrl-C resumes when the same
command runs again, and its stems equal an uninterrupted run's bit for bit.

Each test starts the CLI as a subprocess (tiny model, 30 s of noise: six chunks), waits until
its partial run has a checkpoint past the first region, signals it, reruns the same command and
compares every stem file with a reference run's. Nothing is left in $TMPDIR or in the data
folder afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

STEMS = ["drums", "bass", "other", "vocals", "guitar", "piano"]


def _command(song: Path, repo: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "engine.cli", "separate", str(song), "--repo", str(repo),
            "-o", str(out), "--backend", "torch", "--shifts", "1", "--seed", "3", "-j", "1",
            *extra]


def _env(home: Path, tmp: Path) -> dict[str, str]:
    return {**os.environ, "DEMIXER_HOME": str(home), "TMPDIR": str(tmp),
            "DEMIXER_CHECKPOINT_EVERY_S": "0",  # a mark after each chunk: no race with the end
            "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


@pytest.fixture(scope="module")
def song_and_reference(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory
                       ) -> tuple[Path, dict[str, bytes]]:
    folder = tmp_path_factory.mktemp("resume-ref")
    song = folder / "long song.wav"
    audio = 0.2 * np.random.default_rng(4).standard_normal((44100 * 30, 2))
    sf.write(song, audio.astype(np.float32), 44100)
    out, home, tmp = folder / "out", folder / "home", folder / "tmp"
    tmp.mkdir()
    subprocess.run(_command(song, tiny_repo, out), env=_env(home, tmp), check=True,
                   capture_output=True, timeout=900)
    stems = out / "htdemucs_6s" / song.stem
    return song, {s: (stems / f"{s}.wav").read_bytes() for s in STEMS}


def _ready_frames(home: Path) -> int:
    for index in (home / "partial").glob("*/stems/stems.json"):
        try:
            return int(json.loads(index.read_text())["ready_frames"])
        except (OSError, ValueError, KeyError):
            pass
    return 0


@pytest.mark.parametrize("signum,code", [(signal.SIGKILL, -signal.SIGKILL),
                                         (signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_an_interrupted_run_resumes_bit_identically(
        signum: int, code: int, tiny_repo: Path, tmp_path: Path,
        song_and_reference: tuple[Path, dict[str, bytes]]) -> None:
    song, reference = song_and_reference
    out, home, tmp = tmp_path / "out", tmp_path / "home", tmp_path / "tmp"
    tmp.mkdir()
    env = _env(home, tmp)
    proc = subprocess.Popen(_command(song, tiny_repo, out), env=env, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 600
    while _ready_frames(home) == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # a progress mark in its partial index: some chunks are kept
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.kill(proc.pid, signum)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == code, err
    kept = _ready_frames(home)
    assert 0 < kept < 44100 * 30
    if signum != signal.SIGKILL:
        [line] = err.strip().splitlines()
        assert line.startswith("demixer: interrupted; run the same command again to resume "
                               f"{song.name} from ")
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))
    again = subprocess.run(_command(song, tiny_repo, out), env=env, capture_output=True,
                           text=True, timeout=900)
    assert again.returncode == 0, again.stderr
    assert f"demixer: resuming {song.name} from " in again.stderr
    stems = out / "htdemucs_6s" / song.stem
    for stem, want in reference.items():
        assert (stems / f"{stem}.wav").read_bytes() == want, stem
    assert list(tmp.iterdir()) == []  # nothing in $TMPDIR, ever
    assert list((home / "partial").iterdir()) == [] and list((home / "work").iterdir()) == []
