"""The first-run dialog: a model's download, verification, conversion (CoreML) and
calibration (`--backend auto`: which backend is fastest and still correct on this computer,
measured once in the worker), with progress and cancel, and a plain sentence and a way
forward (retry, or the folder to put the checkpoint in) on failure."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import (
    QDialog,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.protocol import ModelKey
from app.reveal import reveal
from app.service import SeparationService
from engine.backends import resolve_backend_kind
from engine.catalogue import get_entry
from engine.download import DownloadProgress
from engine.errors import DemixerError
from engine.store import checkpoints_dir

if TYPE_CHECKING:
    from engine.calibrate import CalibrationProgress
    from engine.coreml.convert import ConvertProgress

PENDING, ACTIVE, DONE = "○", "◉", "✓"


class ModelDialog(QDialog):
    ready = Signal(object)  # ModelKey
    declined = Signal(object, str)  # ModelKey, why

    def __init__(self, key: ModelKey, loader: SeparationService,
                 parent: QWidget | None = None, converting: bool = False,
                 calibrating: bool = False) -> None:
        """`converting` / `calibrating`: opened because a conversion or a calibration started
        (the checkpoint is there)."""
        super().__init__(parent)
        self.converting, self.calibrating = converting, calibrating
        self.key, self.loader = key, loader
        self.entry = get_entry(key.name)
        self.setWindowTitle("Preparing a model" if converting or calibrating
                            else "Downloading a model")
        self.setMinimumWidth(520)
        self.stage_labels: dict[str, QLabel] = {}
        self._declined = False
        self._why = "it was not downloaded"
        self.calibrated: list[str] = []  # one line per candidate measured
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.detail = QLabel()
        self.error = QLabel()
        self.error.setWordWrap(True)
        self.error.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error.setStyleSheet("color: #d9534f;")
        self.retry = QPushButton("Retry")
        self.folder = QPushButton("Show Folder")
        self.folder.setToolTip(str(checkpoints_dir()))
        self.cancel = QPushButton("Cancel")
        self.retry.clicked.connect(self.start)
        self.folder.clicked.connect(self._show_folder)
        self.cancel.clicked.connect(self._cancel)
        self._build()
        loader.progress.connect(self._on_progress)
        loader.converting.connect(self.show_conversion)
        loader.calibrating.connect(self.show_calibration)
        loader.loaded.connect(self._on_loaded)
        loader.failed.connect(self._on_failed)
        loader.cancelled.connect(self._on_cancelled)

    def _stages(self) -> list[tuple[str, str]]:
        size = sum(c.bytes or 0 for c in self.entry.checkpoints)
        files = len(self.entry.checkpoints)
        what = f"{files} checkpoints" if files > 1 else "the checkpoint"
        mb = f" ({size / 1e6:.0f} MB)" if size else ""
        stages = [("download", f"Download {what}{mb}"), ("load", "Verify SHA-256 and load")]
        auto = self.key.backend == "auto"
        try:
            coreml = resolve_backend_kind(self.key.backend) == "coreml" and not auto
        except DemixerError:
            coreml = False
        if coreml or (self.converting and not auto):
            stages.append(("convert", "Convert for the Neural Engine (first time only)"))
        if auto:
            stages.append(("calibrate", "Find the fastest correct way to run it on this "
                                        "computer (first time only)"))
        return stages

    def _build(self) -> None:
        what = ("is being prepared to run on this computer; this happens once"
                if self.converting or self.calibrating else
                "is needed to separate songs. It is downloaded once and kept in this "
                f"folder:<br><code>{checkpoints_dir()}</code>")
        intro = QLabel(f"<b>{self.entry.title}</b> {what}.")
        intro.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        for key, text in self._stages():
            label = QLabel()
            label.setProperty("text_", text)
            self.stage_labels[key] = label
            layout.addWidget(label)
        layout.addWidget(self.bar)
        layout.addWidget(self.detail)
        layout.addWidget(self.error)
        buttons = QHBoxLayout()
        buttons.addWidget(self.folder)
        buttons.addStretch(1)
        buttons.addWidget(self.retry)
        buttons.addWidget(self.cancel)
        layout.addLayout(buttons)

    def _mark(self, active: str) -> None:
        order = list(self.stage_labels)
        for key, label in self.stage_labels.items():
            mark = DONE if order.index(key) < order.index(active) else (
                ACTIVE if key == active else PENDING)
            label.setText(f"{mark}  {label.property('text_')}")

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self.refit()

    def refit(self) -> None:
        """Grow (or shrink) to the wrapped text: a QDialog's first size comes from size
        hints that guess the wrapped labels' heights, and it does not follow a longer error
        by itself, which clipped the path and the error's last line."""
        self.adjustSize()

    def start(self) -> None:
        """(Re)start the download and load."""
        self.error.hide()
        self.retry.hide()
        self.refit()
        self.bar.setRange(0, 1000)
        self.bar.setValue(0)
        self.detail.setText("Connecting…")
        self._mark("download")
        self.loader.load(self.key)

    def follow(self) -> None:
        """Show a load already under way (a conversion or calibration the worker started by
        itself)."""
        self.error.hide()
        self.retry.hide()
        self.detail.setText("")
        self._mark("calibrate" if "calibrate" in self.stage_labels and (
            self.calibrating or "convert" not in self.stage_labels) else "convert")

    def _on_progress(self, key: ModelKey, p: DownloadProgress) -> None:
        if key != self.key:
            return
        if p.total:
            self.bar.setValue(int(1000 * p.done / p.total))
            self.detail.setText(f"{p.file}: {p.done / 1e6:.1f} of {p.total / 1e6:.1f} MB"
                                f" · {p.bytes_per_s / 1e6:.1f} MB/s")
            if p.done >= p.total:
                self._mark("load")
                self.bar.setRange(0, 0)
        else:
            self.detail.setText(f"{p.file}: {p.done / 1e6:.1f} MB")

    def show_conversion(self, key: ModelKey, p: ConvertProgress) -> None:
        """A conversion's progress: its own stage, or (with `auto`, where the calibration
        converts each CoreML candidate it measures) part of the calibration stage."""
        if key != self.key:
            return
        if "convert" in self.stage_labels:
            self._mark("convert")
            self.detail.setText(p.message)
        elif "calibrate" in self.stage_labels:
            self._mark("calibrate")
            self.detail.setText(f"Converting for the Neural Engine: {p.message}")
        else:
            return
        self.bar.setRange(0, 1000)
        self.bar.setValue(int(1000 * p.fraction))

    def show_calibration(self, key: ModelKey, p: CalibrationProgress) -> None:
        """Each backend runs one fixed chunk and is checked against the reference."""
        if key != self.key or "calibrate" not in self.stage_labels:
            return
        self._mark("calibrate")
        self.bar.setRange(0, 1000)
        self.bar.setValue(int(1000 * p.fraction))
        if p.measurement is not None:
            self.calibrated.append(f"{p.candidate}: {p.message}")
        self.detail.setText(f"Measuring {p.candidate}: {p.message}")

    def _on_loaded(self, key: ModelKey) -> None:
        if key == self.key:
            for label in self.stage_labels.values():
                label.setText(f"{DONE}  {label.property('text_')}")
            self.ready.emit(key)
            self.accept()

    def _on_failed(self, key: ModelKey, message: str) -> None:
        if key != self.key:
            return
        self.bar.setRange(0, 1000)
        self.bar.setValue(0)
        self.detail.setText("")
        self.error.setText(message)
        self.error.show()
        self.retry.show()
        self.refit()

    def _on_cancelled(self, key: ModelKey) -> None:
        if key == self.key:
            self._why = "its preparation was cancelled"
            self.reject()

    def _show_folder(self) -> None:
        problem = reveal(checkpoints_dir())
        if problem:  # no file manager here: the path is in the text above, say so
            self.detail.setText(problem)

    def _cancel(self) -> None:
        self.reject()

    def reject(self) -> None:
        """Cancel, Escape or the close box: stop a running download, conversion or
        calibration first (its `cancelled` signal comes back here), then tell the queue the
        model is not there."""
        if self.loader.busy == self.key:
            self.loader.cancel()
            return
        if not self._declined:
            self._declined = True
            self.declined.emit(self.key, f"Model {self.key.name} is not available: "
                                         f"{self._why}.")
        super().reject()
