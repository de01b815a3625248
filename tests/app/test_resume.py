"""An interrupted separation resumes from its last checkpoint, bit for bit as one run: after
kill -9 of a real app process, after "Quit" in the quit question, after a SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt, QTimer

from app.filelock import held_elsewhere
from app.library import LOCK, WORKER_LOCK, resumable_fraction
from app.mainwindow import MainWindow
from app.protocol import ModelKey
from app.queue import State
from engine.stembuffers import read_index
from tests.app.apps import (
    app_environment,
    read_stems,
    reference_stems,
    start_app,
    wait_for_checkpoint,
)
from tests.app.gui import wait_for
from tests.engine.audio_files import sine_mix, write_wav

REAL_ASK = MainWindow.ask  # before tests/app/conftest.py's `asked` stands in for it
SECONDS = 16.0
SEGMENT = 2.0  # ten chunks of the tiny model: several checkpoints (one a second) on the way


@pytest.fixture
def long_song(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    audio = sine_mix(SECONDS, 44100, amplitude=0.3)
    audio = (audio + 0.05 * rng.standard_normal(audio.shape)).astype(np.float32)
    return write_wav(tmp_path / "long.wav", audio, 44100)


@pytest.fixture(autouse=True)
def _checkpoint_every_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process windows' workers too (they inherit the environment): see tests/app/apps."""
    monkeypatch.setenv("DEMIXER_CHECKPOINT_EVERY_S", "0")


@pytest.fixture
def app_env(tiny_repo: Path, tmp_path: Path) -> dict[str, str]:
    return app_environment(tmp_path / "home", tiny_repo, tmp_path / "config", SEGMENT)


@pytest.fixture
def apps() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def _worker_gone(folder: Path, timeout_s: float = 30) -> None:
    """The worker of a dead app cancels into its checkpoint and exits by itself."""
    deadline = time.monotonic() + timeout_s
    while held_elsewhere(folder / WORKER_LOCK):
        assert time.monotonic() < deadline, "the worker outlived its app"
        time.sleep(0.1)


def test_sigterm_asks_and_after_kill_9_mid_song_the_resume_is_bit_identical(  # type: ignore[no-untyped-def]
        app_env, long_song, apps, make_window, monkeypatch, model_repo, tmp_path, qtbot) -> None:
    home = Path(app_env["DEMIXER_HOME"])
    apps.append(start_app(app_env, long_song))
    folder, record = wait_for_checkpoint(home, apps[0])
    apps[0].send_signal(signal.SIGTERM)  # handled like a quit: it asks first
    time.sleep(1.0)
    assert apps[0].poll() is None  # still there: the question waits (nobody answers)
    apps[0].send_signal(signal.SIGKILL)
    apps[0].wait(10)
    _worker_gone(folder)
    fraction = resumable_fraction(folder / "stems")
    assert fraction is not None and 0 < fraction < 1
    monkeypatch.setenv("DEMIXER_HOME", str(home))  # the app opens again on that library
    window = make_window()
    [item] = window.queue.items
    row = window.queue_view.row_for(item)
    assert item.state == State.INTERRUPTED and item.path == long_song
    assert item.key.segment == SEGMENT  # as it was started (the entry keeps the settings)
    assert row.status.text() == f"Interrupted at {fraction:.0%}"
    assert row.resume.isVisibleTo(row) and not row.cancel.isVisibleTo(row)
    qtbot.mouseClick(row.resume, Qt.MouseButton.LeftButton)
    wait_for(qtbot, item, timeout_s=180)
    assert item.state == State.DONE, item.message
    assert item.entry.folder == folder and item.resumed_at == pytest.approx(fraction)
    assert [e.folder for e in window.library.entries()] == [folder]
    want = reference_stems(long_song, record, item.key, tmp_path)
    got = read_stems(folder / "stems")
    assert got.shape == want.shape and np.array_equal(got, want)


def test_quit_asks_first_and_leaves_the_separation_to_resume_by_itself(  # type: ignore[no-untyped-def]
        make_window, settings, model_repo, long_song, asked, qtbot) -> None:
    settings.segment = SEGMENT
    window = make_window()
    [item] = window.open_paths([long_song])
    home = window.library.root.parent
    folder, _ = wait_for_checkpoint(home, pause=lambda: qtbot.wait(50))
    asked.answers["Quit Demixer?"] = "Cancel"
    window.close()
    assert window.isVisible() and item.state == State.SEPARATING  # nothing stopped
    title, text, buttons = asked.questions[-1]
    assert buttons == ["Quit", "Cancel"] and "“long.wav” is being separated" in text
    assert "resumes where it stopped when you open Demixer again" in text
    asked.answers["Quit Demixer?"] = "Quit"
    window.close()
    assert not window.isVisible() and item.state == State.INTERRUPTED
    assert not held_elsewhere(folder / LOCK) and not held_elsewhere(folder / WORKER_LOCK)
    record = read_index(folder / "stems")
    assert record is not None and 0 < record["ready_frames"] < record["frames"]
    settings.resume_automatically = True
    again = make_window()
    [resumed] = again.queue.items
    assert resumed.entry is not None and resumed.entry.folder == folder
    wait_for(qtbot, resumed, timeout_s=180)  # nobody clicked
    assert resumed.state == State.DONE, resumed.message
    assert resumed.resumed_at == pytest.approx(record["ready_frames"] / record["frames"])
    assert resumed.key == ModelKey("htdemucs_6s", shifts=1, segment=SEGMENT)
    assert [e.folder for e in again.library.entries()] == [folder]
    # (bit for bit as one run: the kill -9 test above compares; a quit only adds a last
    # checkpoint, which engine tests/engine/test_resume.py cuts at every chunk)


def test_a_second_sigterm_while_the_question_is_open_quits(  # type: ignore[no-untyped-def]
        make_window, settings, model_repo, long_song, monkeypatch, qtbot) -> None:
    """SIGINT/SIGTERM call `request_quit` (app.main): the first asks, with the real modal
    question; a second one answers it with Quit, leaving the separation resumable."""
    monkeypatch.setattr(MainWindow, "ask", REAL_ASK)
    settings.segment = SEGMENT
    window = make_window()
    [item] = window.open_paths([long_song])
    folder, _ = wait_for_checkpoint(window.library.root.parent, pause=lambda: qtbot.wait(50))
    seen: list[str] = []

    def second_signal() -> None:
        box = window._asking
        seen.append(box.text() if box is not None else "")
        window.request_quit()

    QTimer.singleShot(300, second_signal)
    window.request_quit()  # returns once the question is answered
    assert seen and "“long.wav” is being separated" in seen[0]
    assert not window.isVisible() and item.state == State.INTERRUPTED
    _worker_gone(folder, timeout_s=5)
    fraction = resumable_fraction(folder / "stems")
    assert fraction is not None and 0 < fraction < 1
    home = window.library.root.parent
    assert not any((home / "work").iterdir())  # no decoded track left behind
