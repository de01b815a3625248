"""The worker process's side of the protocol, run in-process with a fake pipe, and the
first-run dialog following a CoreML conversion the worker reports."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt

import app.protocol
from app.protocol import (
    Calibrate,
    Cancel,
    Focus,
    JobNews,
    ModelKey,
    ModelNews,
    Prepare,
    Quit,
    Separate,
    StemsInfo,
    TrackNews,
    WorkerDied,
)
from app.worker import _Child
from engine.calibrate import CalibrationProgress
from engine.coreml.convert import ConvertProgress
from engine.download import DownloadProgress
from engine.errors import ChecksumError
from engine.job import JobEvent


class FakeConn:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, message: Any) -> None:
        self.sent.append(message)


def test_prepare_reports_download_and_conversion_then_loaded(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    key = ModelKey("htdemucs_6s", backend="coreml")
    seen: dict[str, Any] = {}

    def fake_build(k, progress, cancel, convert, calibrate):  # type: ignore[no-untyped-def]
        seen["cancel"] = cancel
        progress(DownloadProgress("5c90dfd2-34c22ccb.th", 10, 20, 1e6))
        convert(ConvertProgress("trace", 0.1, "Tracing the model"))
        calibrate(CalibrationProgress(0.5, "coreml mixed all", "timed call 1 of 2"))
        return "separator"

    monkeypatch.setattr(app.protocol, "build", fake_build)
    conn = FakeConn()
    child = _Child(conn, threading.Event())  # type: ignore[arg-type]
    child.prepare(key)
    kinds = [m.kind for m in conn.sent]
    assert kinds == ["progress", "convert", "calibrate", "loaded"]
    assert conn.sent[1].payload.message == "Tracing the model" and conn.sent[1].key == key
    assert conn.sent[2].payload.candidate == "coreml mixed all" and conn.sent[2].key == key
    assert child.cached == (key, "separator")
    assert not seen["cancel"].is_set()
    conn.sent.clear()
    child.prepare(key)  # cached: loaded at once, no second build
    assert [m.kind for m in conn.sent] == ["loaded"]


def test_prepare_failures_are_one_sentence(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def bad_build(*args):  # type: ignore[no-untyped-def]
        raise ChecksumError("Checkpoint x.th in /m is corrupt; replace the file.")

    monkeypatch.setattr(app.protocol, "build", bad_build)
    conn = FakeConn()
    _Child(conn, threading.Event()).prepare(ModelKey("htdemucs"))  # type: ignore[arg-type]
    assert conn.sent == [ModelNews("failed", ModelKey("htdemucs"),
                          "Checkpoint x.th in /m is corrupt; replace the file.")]


def test_an_unforeseen_error_is_one_line_naming_the_log(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Not a crash of the worker (the queue would wait for an answer that never comes)."""
    def bad_build(*args):  # type: ignore[no-untyped-def]
        raise ValueError("a surprise\nwith a second line")

    monkeypatch.setattr(app.protocol, "build", bad_build)
    conn = FakeConn()
    child = _Child(conn, threading.Event())  # type: ignore[arg-type]
    child.prepare(ModelKey("htdemucs"))
    child.separate(7, "/music/song.wav", ModelKey("htdemucs"), "/nowhere/stems", "/nowhere/mix")
    [model, news] = conn.sent
    kind, said, job, event = model.kind, model.payload, news.job_id, news.event
    assert kind == "failed" and job == 7 and event.kind == "failed"
    for line in (said, event.message):
        assert line.startswith("Model htdemucs: failed unexpectedly (ValueError: a surprise)")
        log = Path(line.split("the details are in ")[1].rstrip("."))
        assert "with a second line" in log.read_text()  # the traceback, in full


def test_a_conversion_opens_the_first_run_dialog_with_its_progress(window, qtbot) -> None:  # type: ignore[no-untyped-def]
    key = ModelKey("htdemucs_6s", backend="coreml")
    window.service.converting.emit(key, ConvertProgress("convert", 0.4, "Converting to ML"))
    dialog = window.model_dialog
    assert dialog is not None and dialog.windowTitle() == "Preparing a model"
    assert dialog.stage_labels["convert"].text().startswith("◉")
    assert dialog.stage_labels["download"].text().startswith("✓")
    assert dialog.bar.value() == 400 and dialog.detail.text() == "Converting to ML"
    window.service.failed.emit(key, "The conversion ran out of memory; close other apps.")
    assert dialog.error.isVisibleTo(dialog) and dialog.retry.isVisibleTo(dialog)
    assert "out of memory" in dialog.error.text()
    with qtbot.waitSignal(dialog.declined) as declined:
        qtbot.mouseClick(dialog.cancel, Qt.MouseButton.LeftButton)
    assert "htdemucs_6s" in declined.args[1] and window.model_dialog is None


# --- the protocol's messages ---------------------------------------------------------------

MESSAGES = [
    Prepare(ModelKey("htdemucs")),
    Separate(3, "/music/a.wav", ModelKey("htdemucs_6s", shifts=2), "/lib/x/stems", "/lib/x/mix",
             resume=True),
    Calibrate(ModelKey("htdemucs_6s", quality="exact")),
    Cancel(3),
    Quit(),
    ModelNews("failed", ModelKey("htdemucs"), "Checkpoint x.th in /m is corrupt."),
    ModelNews("convert", ModelKey("htdemucs"), ConvertProgress("trace", 0.5, "Tracing")),
    TrackNews(3, StemsInfo(frames=441000, samplerate=44100, source_rate=48000,
                           source_frames=480000, sources=("drums", "bass"), channels=2)),
    JobNews(3, JobEvent("ready", ready_frames=44100)),
    WorkerDied(-9),
    Focus(3, 123_456),
    JobNews(3, JobEvent("ready", ready_frames=0, final=((44100, 88200),))),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_crosses_the_pipe_whole_and_is_frozen(message: Any) -> None:
    """What the child sends is what the parent reads: equal after pickling (the pipe), and
    immutable (the reader thread and the GUI thread both hold it)."""
    import dataclasses

    sent = pickle.loads(pickle.dumps(message))
    assert sent == message and type(sent) is type(message)
    fields = dataclasses.fields(message)
    if fields:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(message, fields[0].name, None)


def test_the_service_reads_each_kind_of_news(qtbot) -> None:  # type: ignore[no-untyped-def]
    """Typed news in, the right signal out (on the GUI thread, queued)."""
    from app.service import SeparationService

    service = SeparationService()
    key = ModelKey("htdemucs")
    with qtbot.waitSignal(service.failed) as failed:
        service._from_reader(ModelNews("failed", key, "no"))
    assert failed.args == [key, "no"]
    info = MESSAGES[7].info  # type: ignore[attr-defined]
    with qtbot.waitSignal(service.jobTrack) as track:
        service._from_reader(TrackNews(5, info))
    assert track.args == [5, info]
    with qtbot.waitSignal(service.died) as died:
        service._from_reader(WorkerDied(-9))
    assert died.args == [-9]


class _FocusedJob:
    def __init__(self) -> None:
        self.frames: list[int] = []

    def focus(self, frame: int) -> None:
        self.frames.append(frame)


def test_a_seek_reaches_the_running_job_and_its_islands_come_back(qtbot) -> None:  # type: ignore[no-untyped-def]
    """GUI -> worker: a `Focus` for the running job moves it (another job's is dropped);
    worker -> GUI: the job's final intervals grow the song's `LiveProgress` at once."""
    from app.service import LiveProgress, SeparationService

    child = _Child(FakeConn(), threading.Event())  # type: ignore[arg-type]
    job = _FocusedJob()
    child.during_job(Focus(7, 99_000), job, 7)  # type: ignore[arg-type]
    child.during_job(Focus(8, 5), job, 7)  # type: ignore[arg-type]
    assert job.frames == [99_000] and child.pending == []
    service = SeparationService()
    progress = LiveProgress()
    service._live[4] = progress  # as `separate` registers it (no worker started here)
    service._from_reader(JobNews(4, JobEvent("ready", ready_frames=0,
                                             final=((90_000, 130_000),))))
    service._from_reader(JobNews(4, JobEvent("ready", ready_frames=20_000,
                                             final=((0, 20_000), (90_000, 170_000)))))
    assert progress.final.spans == ((0, 20_000), (90_000, 170_000))
    assert progress.ready_frames == 20_000
    qtbot.wait(10)  # let the queued news reach the GUI thread before the service goes


CHILD = """
import multiprocessing, sys
from app.protocol import ModelKey, Prepare, Quit
from app.worker import _Child

parent, child = multiprocessing.Pipe()
parent.send(Prepare(ModelKey("htdemucs_6s", backend="torch")))
parent.send(Quit())
_Child(child, multiprocessing.Event()).run()
news = parent.recv()
qt = sorted(m for m in sys.modules if m.split(".")[0] in ("PySide6", "shiboken6"))
print(news.kind, "torch" in sys.modules, qt)
"""


def test_the_worker_prepares_a_model_without_loading_qt(tiny_repo: Path, tmp_path: Path) -> None:
    """The child's code (app.worker, app.protocol, the engine) loads a model in a fresh
    interpreter and PySide6 never loads there."""
    env = dict(os.environ, DEMIXER_MODEL_REPO=str(tiny_repo), DEMIXER_HOME=str(tmp_path),
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    run = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                         text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["loaded", "True", "[]"], run.stdout + run.stderr
