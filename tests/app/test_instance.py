"""One app per user and data folder, with real processes: a second `demixer FILE` hands the
file to the window already open and exits 0 at once; a crashed instance's socket does not
stop the next one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QDir

from app.filelock import held_elsewhere
from app.instance import LOCK_NAME, server_name
from app.library import Library

ROOT = Path(__file__).resolve().parents[2]
START_S = 90  # a cold start on a busy 2-core machine: Python, Qt, the window


@pytest.fixture
def app_env(tiny_repo: Path, tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, DEMIXER_HOME=str(tmp_path / "home"),
                DEMIXER_MODEL_REPO=str(tiny_repo), QT_QPA_PLATFORM="offscreen",
                PYTHONPATH=str(ROOT))


def _start_app(env: dict[str, str]) -> subprocess.Popen[str]:
    """`python -m app` (what `demixer` opens), up once it holds the app lock."""
    process = subprocess.Popen([sys.executable, "-m", "app"], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
    lock = Path(env["DEMIXER_HOME"]) / LOCK_NAME
    deadline = time.monotonic() + START_S
    while not held_elsewhere(lock):
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "the app did not start"
        time.sleep(0.2)
    return process


@pytest.fixture
def apps() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def _finished_sources(home: Path) -> list[str]:
    return [e.source for e in Library(home / "library").entries()]


def test_a_second_demixer_hands_its_files_to_the_open_window(app_env, song, apps) -> None:  # type: ignore[no-untyped-def]
    home = Path(app_env["DEMIXER_HOME"])
    apps.append(_start_app(app_env))
    started = time.monotonic()
    second = subprocess.run([sys.executable, "-m", "engine.cli", song.name], env=app_env,
                            cwd=song.parent, capture_output=True, text=True, timeout=60)
    took = time.monotonic() - started
    assert second.returncode == 0, second.stderr
    assert "1 file(s) opened in the Demixer window that is already open" in second.stderr
    assert took < 20, f"the hand-off took {took:.1f} s"  # it loads neither torch nor a window
    deadline = time.monotonic() + 120  # the first window separates it (relative path made
    while _finished_sources(home) != [str(song)]:  # absolute by the second process)
        assert apps[0].poll() is None, apps[0].communicate()[0]
        assert time.monotonic() < deadline, "the handed-off song was not separated"
        time.sleep(0.5)
    apps[0].send_signal(signal.SIGTERM)  # nothing runs now: it quits without asking
    assert apps[0].wait(30) == 0


@pytest.mark.skipif(sys.platform == "win32", reason="a socket file exists on Unix only")
def test_a_crashed_instance_leaves_nothing_that_stops_the_next(app_env, song, apps) -> None:  # type: ignore[no-untyped-def]
    home = Path(app_env["DEMIXER_HOME"])
    crashed = _start_app(app_env)
    apps.append(crashed)
    socket_file = Path(QDir.tempPath()) / server_name(home)  # where QLocalServer puts it
    deadline = time.monotonic() + START_S
    while not socket_file.exists():
        assert time.monotonic() < deadline
        time.sleep(0.2)
    crashed.send_signal(signal.SIGKILL)
    crashed.wait(10)
    assert socket_file.exists()  # what a crash leaves behind
    apps.append(_start_app(app_env))  # the lock died with the process; the socket is stale
    second = subprocess.run([sys.executable, "-m", "engine.cli", str(song)], env=app_env,
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    deadline = time.monotonic() + 120
    while _finished_sources(home) != [str(song)]:
        assert time.monotonic() < deadline, "the new instance did not take the song"
        time.sleep(0.5)
    apps[1].send_signal(signal.SIGTERM)
    assert apps[1].wait(30) == 0
