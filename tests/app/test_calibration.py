"""The calibration in the app: the first-run dialog's stage (progress, cancel), the worker
running it, Preferences' table and quality, and a backend hand-over shown once."""

from __future__ import annotations

import json
import threading
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import QTableWidgetItem

import app.protocol
import engine.calibrate
import engine.pipeline
from app.preferences import PreferencesDialog
from app.protocol import ModelKey, ModelNews
from app.queue import State
from app.worker import _Child
from engine.atomicio import write_text_atomic
from engine.calibrate import (
    Calibration,
    CalibrationProgress,
    Measurement,
    cache_dir,
    environment_key,
    latest_calibration,
)
from engine.job import JobEvent
from engine.store import resolve_model
from tests.app.gui import wait_for
from tests.app.test_worker import FakeConn


def _forbid_calibrating_here(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The GUI process must never measure: only the worker process may."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("calibration ran in the GUI process")
    monkeypatch.setattr(engine.calibrate, "measure", refuse)


def test_first_run_calibrates_in_the_worker_as_a_dialog_stage_with_cancel(  # type: ignore[no-untyped-def]
        window, uncalibrated_repo, song, qtbot, monkeypatch) -> None:
    _forbid_calibrating_here(monkeypatch)
    seen: list[CalibrationProgress] = []
    window.service.calibrating.connect(lambda key, p: seen.append(p))
    [item] = window.open_paths([song])
    qtbot.waitUntil(lambda: window.model_dialog is not None, timeout=60000)
    dialog = window.model_dialog
    assert dialog.windowTitle() == "Preparing a model" and "convert" not in dialog.stage_labels
    assert dialog.stage_labels["calibrate"].text().startswith("◉  Find the fastest correct")
    assert dialog.stage_labels["load"].text().startswith("✓")
    qtbot.waitUntil(lambda: dialog.detail.text().startswith("Measuring torch fp32 cpu: "),
                    timeout=60000)
    qtbot.mouseClick(dialog.cancel, Qt.MouseButton.LeftButton)  # stops the worker's run
    wait_for(qtbot, item)
    assert item.state == State.FAILED and "its preparation was cancelled" in item.message
    assert window.model_dialog is None
    assert not list(cache_dir().glob("*.json"))  # nothing half-measured is kept

    [again] = window.open_paths([song])  # the next try measures to the end, then separates
    qtbot.waitUntil(lambda: window.model_dialog is not None, timeout=60000)
    second: Any = window.model_dialog  # (mypy: narrowed to None by the assert above)
    wait_for(qtbot, again, timeout_s=240)
    assert again.state == State.DONE, again.message
    stored = latest_calibration("htdemucs_6s")
    assert stored is not None
    labels = [m.label for m in stored.measurements]
    assert labels[:2] == ["torch fp32 cpu", "torch bf16 cpu"]
    assert [p.candidate for p in seen if p.measurement is not None][-len(labels):] == labels
    assert 0 < seen[-1].fraction <= 1.0 and second.calibrated[-1].startswith(labels[-1])
    assert stored.chosen("default").label != "torch bf16 cpu"  # 45-50 dB: below 60
    assert stored.key["checkpoints"] == list(resolve_model("htdemucs_6s").sha256)


class FakeService(QObject):
    """What the calibration panel uses of `SeparationService`, recording requests."""

    calibrating = Signal(object, object)
    calibrated = Signal(object, object)
    calibrationFailed = Signal(object, str)

    def __init__(self) -> None:
        super().__init__()
        self.recalibrating: ModelKey | None = None
        self.asked: list[str] = []

    def recalibrate(self, key: ModelKey) -> None:
        self.recalibrating = key
        self.asked.append("calibrate")

    def cancel(self) -> None:
        self.asked.append("cancel")


def _stored(name: str = "htdemucs_6s") -> Calibration:
    """A calibration as this machine would store it, with Mac-like candidates."""
    rows = (Measurement("torch", "fp32", "cpu", 2.0, float("inf")),
            Measurement("torch", "bf16", "cpu", 1.2, 48.0),
            Measurement("coreml", "mixed", "all", 0.3, 44.5),
            Measurement("mlx", "fp16", "gpu", 0.5, 63.0),
            Measurement("coreml", "fp32", "cpu_and_ne", error="RuntimeError: ANE rejected"))
    resolved = resolve_model(name)
    key = {**environment_key(resolved), "candidates": [m.label for m in rows]}
    calibration = Calibration(name, key, rows, 31.0, "2026-01-02T03:04:05+00:00")
    write_text_atomic(cache_dir() / f"{name}-test.json", json.dumps(calibration.to_json()))
    return calibration


def _item(dialog: PreferencesDialog, row: int, column: int) -> QTableWidgetItem:
    item = dialog.calibration.table.item(row, column)
    assert item is not None
    return item


def _texts(dialog: PreferencesDialog) -> list[list[str]]:
    table = dialog.calibration.table
    return [[_item(dialog, r, c).text() for c in range(table.columnCount())]
            for r in range(table.rowCount())]


def test_preferences_show_the_choice_and_table_per_quality_and_run_it_again(  # type: ignore[no-untyped-def]
        settings, uncalibrated_repo, qtbot) -> None:
    _stored()
    service = FakeService()
    dialog = PreferencesDialog(settings, service=service,  # type: ignore[arg-type]
                               model_key=ModelKey("htdemucs_6s"))
    qtbot.addWidget(dialog)
    panel = dialog.calibration
    assert "runs on <b>mlx fp16 gpu</b>" in panel.summary.text()
    assert "within 60 dB" in panel.summary.text()
    rows = _texts(dialog)
    assert [r[:3] for r in rows][0] == ["torch", "fp32", "cpu"] and rows[0][4] == "reference"
    assert rows[3][3:] == ["0.50", "63.0 dB", "chosen: the fastest that passes the default "
                                             "gate (60 dB)"]
    assert rows[2][5] == "worst stem 44.5 dB is below the default gate (60 dB)"
    assert rows[4][5] == "RuntimeError: ANE rejected" and rows[4][3] == "-"
    assert _item(dialog, 3, 0).font().bold() and not _item(dialog, 0, 0).font().bold()
    dialog.quality.setCurrentIndex(dialog.quality.findData("exact"))
    assert "runs on <b>torch fp32 cpu</b>" in panel.summary.text()
    dialog.quality.setCurrentIndex(dialog.quality.findData("fast"))
    assert "runs on <b>coreml mixed all</b>" in panel.summary.text()
    assert _texts(dialog)[3][5] == "passed; 1.7x slower than coreml mixed all"

    qtbot.mouseClick(panel.run, Qt.MouseButton.LeftButton)  # measured in the worker
    assert service.asked == ["calibrate"] and panel.run.text() == "Cancel"
    service.calibrating.emit(ModelKey("htdemucs_6s"), CalibrationProgress(0.4, "torch bf16 cpu",
                                                                          "warmed up"))
    assert panel.bar.value() == 400 and panel.summary.text() == "Measuring torch bf16 cpu: " \
                                                                 "warmed up"
    qtbot.mouseClick(panel.run, Qt.MouseButton.LeftButton)
    assert service.asked == ["calibrate", "cancel"]
    service.recalibrating = None
    fresh = Calibration("htdemucs_6s", {}, (Measurement("torch", "fp32", "cpu", 1.0,
                                                        float("inf")),), 5.0, "2026-02-03T00:00")
    service.calibrated.emit(ModelKey("htdemucs_6s"), fresh)
    assert panel.bar.isHidden() and panel.run.text() == "Calibrate Again"
    assert _texts(dialog) == [["torch", "fp32", "cpu", "1.00", "reference",
                               "chosen: the fastest that passes the fast gate (40 dB)"]]
    dialog.accept()
    assert settings.quality == "fast"


def test_preferences_without_a_calibration_say_when_it_happens(settings, qtbot) -> None:  # type: ignore[no-untyped-def]
    dialog = PreferencesDialog(settings)
    qtbot.addWidget(dialog)
    assert dialog.calibration.summary.text() == (
        "htdemucs_6s has not been calibrated on this computer yet: its first separation "
        "measures every backend.")
    assert dialog.calibration.table.rowCount() == 0
    assert not dialog.calibration.run.isEnabled()  # no worker to run it in


def test_the_quality_reaches_the_engine(window, settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    settings.quality = "exact"
    key = window.model_key()
    assert key.quality == "exact" and key.backend == "auto"
    seen: dict[str, Any] = {}
    monkeypatch.setattr(engine.pipeline, "build_separator",
                        lambda name, **kwargs: seen.update(kwargs) or "separator")
    assert app.protocol.build(key) == "separator"
    assert seen["quality"] == "exact" and seen["compute_units"] is None  # auto: calibrated
    app.protocol.build(ModelKey("htdemucs_6s", backend="coreml", compute_units="cpu_only"))
    assert seen["compute_units"] == "cpu_only"


def test_the_worker_calibrates_on_request_and_drops_its_old_choice(  # type: ignore[no-untyped-def]
        uncalibrated_repo, monkeypatch) -> None:
    result = _stored()

    def fake_calibrate(bag, resolved, *, progress, cancel, convert_progress):  # type: ignore[no-untyped-def]
        progress(CalibrationProgress(0.5, "torch fp32 cpu", "warmed up"))
        if cancel.is_set():
            from engine.errors import Cancelled
            raise Cancelled()
        return result

    monkeypatch.setattr(engine.calibrate, "calibrate", fake_calibrate)
    conn = FakeConn()
    cancel = threading.Event()
    child = _Child(conn, cancel)  # type: ignore[arg-type]
    child.cached = (ModelKey("htdemucs_6s"), "old separator")  # type: ignore[assignment]
    child.calibrate(ModelKey("htdemucs_6s"))
    assert [m.kind for m in conn.sent] == ["calibrate", "calibrated"]
    assert conn.sent[1].payload == result and child.cached is None
    conn.sent.clear()
    real_clear = cancel.clear
    monkeypatch.setattr(cancel, "clear", lambda: None)  # as if Cancel came while it ran
    cancel.set()
    child.calibrate(ModelKey("htdemucs_6s"))
    assert conn.sent[-1] == ModelNews("calibration-failed", ModelKey("htdemucs_6s"), "")
    real_clear()


def test_a_hand_over_is_shown_once_in_the_status_bar(window, qtbot) -> None:  # type: ignore[no-untyped-def]
    from pathlib import Path

    from app.queue import QueueItem

    item = QueueItem(path=Path("/music/song.wav"), key=ModelKey("htdemucs_6s"),
                     two_stems=False, state=State.SEPARATING)
    window.queue.items.append(item)
    text = ("The coreml mixed all backend failed (RuntimeError: ANE error); continuing with "
            "torch fp32 cpu from the same chunk.")
    window.service.jobEvent.emit(item.id, JobEvent("notice", message=text))
    assert window.statusBar().currentMessage() == f"song.wav: {text}"
    assert item.state == State.SEPARATING  # a notice, not a failure
    window.queue.items.remove(item)  # a made-up item: closing the window must not ask about it
