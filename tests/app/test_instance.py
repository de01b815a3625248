"""One app per user and data folder, with real processes: a second `demixer FILE` hands the
file to the window already open and exits 0 at once; a crashed instance's socket does not
stop the next one."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QDir

from app.instance import server_name
from app.library import Library
from tests.app.apps import app_environment, start_app
from tests.engine.audio_files import sine_mix, write_wav


@pytest.fixture
def app_env(tiny_repo: Path, tmp_path: Path) -> dict[str, str]:
    return app_environment(tmp_path / "home", tiny_repo, tmp_path / "config")


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


def _wait_separated(home: Path, songs: list[Path], app: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while sorted(_finished_sources(home)) != sorted(map(str, songs)):
        assert app.poll() is None, app.communicate()[0]
        assert time.monotonic() < deadline, "the handed-off song was not separated"
        time.sleep(0.5)


@pytest.mark.skipif(sys.platform == "win32", reason="the socket file exists on Unix only")
def test_a_second_demixer_hands_its_files_to_the_open_window(app_env, song, apps,  # type: ignore[no-untyped-def]
                                                              tmp_path) -> None:
    """Then the first crashes (kill -9): the socket file it leaves does not stop the next."""
    home = Path(app_env["DEMIXER_HOME"])
    apps.append(start_app(app_env))
    started = time.monotonic()
    second = subprocess.run([sys.executable, "-m", "app", song.name], env=app_env,
                            cwd=song.parent, capture_output=True, text=True, timeout=60)
    took = time.monotonic() - started
    assert second.returncode == 0, second.stderr
    assert "1 file(s) opened in the Demixer window that is already open" in second.stderr
    assert took < 20, f"the hand-off took {took:.1f} s"  # it loads neither torch nor a window
    _wait_separated(home, [song], apps[0])  # the relative path was made absolute on the way
    socket_file = Path(QDir.tempPath()) / server_name(home)  # where QLocalServer puts it
    assert socket_file.exists()
    apps[0].send_signal(signal.SIGKILL)
    apps[0].wait(10)
    assert socket_file.exists()  # what a crash leaves behind
    apps.append(start_app(app_env))  # the lock died with the process; the socket is stale
    other = write_wav(tmp_path / "other.wav", sine_mix(2.0, 44100, amplitude=0.3), 44100)
    third = subprocess.run([sys.executable, "-m", "app", str(other)], env=app_env,
                           capture_output=True, text=True, timeout=60)
    assert third.returncode == 0, third.stderr
    _wait_separated(home, [song, other], apps[1])
    apps[1].send_signal(signal.SIGTERM)  # nothing runs now: it quits without asking
    assert apps[1].wait(30) == 0


def test_an_unusable_data_folder_is_one_sentence(app_env, song, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a file").write_text("not a folder")
    env = dict(app_env, DEMIXER_HOME=str(tmp_path / "a file" / "home"))
    run = subprocess.run([sys.executable, "-m", "app", str(song)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    [line] = run.stderr.splitlines()  # one sentence, no traceback (the engine's words)
    assert line.startswith("demixer: ") and str(tmp_path / "a file" / "home") in line
    assert "cannot be used" in line and "DEMIXER_HOME" in line
