"""The worker process's side of the protocol, run in-process with a fake pipe, and the
first-run dialog following a CoreML conversion the worker reports."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt

import app.models
from app.models import ModelKey
from app.worker import _Child
from engine.calibrate import CalibrationProgress
from engine.coreml.convert import ConvertProgress
from engine.download import DownloadProgress
from engine.errors import ChecksumError


class FakeConn:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def send(self, message: tuple[Any, ...]) -> None:
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

    monkeypatch.setattr(app.models, "build", fake_build)
    conn = FakeConn()
    child = _Child(conn, threading.Event())  # type: ignore[arg-type]
    child.prepare(key)
    kinds = [m[1] for m in conn.sent]
    assert kinds == ["progress", "convert", "calibrate", "loaded"]
    assert conn.sent[1][3].message == "Tracing the model" and conn.sent[1][2] == key
    assert conn.sent[2][3].candidate == "coreml mixed all" and conn.sent[2][2] == key
    assert child.cached == (key, "separator")
    assert not seen["cancel"].is_set()
    conn.sent.clear()
    child.prepare(key)  # cached: loaded at once, no second build
    assert [m[1] for m in conn.sent] == ["loaded"]


def test_prepare_failures_are_one_sentence(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def bad_build(*args):  # type: ignore[no-untyped-def]
        raise ChecksumError("Checkpoint x.th in /m is corrupt; replace the file.")

    monkeypatch.setattr(app.models, "build", bad_build)
    conn = FakeConn()
    _Child(conn, threading.Event()).prepare(ModelKey("htdemucs"))  # type: ignore[arg-type]
    assert conn.sent == [("model", "failed", ModelKey("htdemucs"),
                          "Checkpoint x.th in /m is corrupt; replace the file.")]


def test_an_unforeseen_error_is_one_line_naming_the_log(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Not a crash of the worker (the queue would wait for an answer that never comes)."""
    def bad_build(*args):  # type: ignore[no-untyped-def]
        raise ValueError("a surprise\nwith a second line")

    monkeypatch.setattr(app.models, "build", bad_build)
    conn = FakeConn()
    child = _Child(conn, threading.Event())  # type: ignore[arg-type]
    child.prepare(ModelKey("htdemucs"))
    child.separate(7, "/music/song.wav", ModelKey("htdemucs"), "/nowhere/stems", "/nowhere/mix")
    [(_, kind, _, said), (_, job, event)] = conn.sent
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
