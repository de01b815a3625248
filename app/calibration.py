"""Preferences' calibration panel: which backend runs the model on this computer, the table
it was chosen from (time and worst-stem SNR of every candidate, passed or why not), and a
button to measure again. The measuring runs in the worker process (`SeparationService.
recalibrate`); this panel only reads the stored result and shows progress."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtGui import QFont
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.calibrate import GATES, Calibration, is_stale, latest_calibration

if TYPE_CHECKING:
    from app.protocol import ModelKey
    from app.service import SeparationService
    from engine.calibrate import CalibrationProgress

COLUMNS = ("Backend", "Precision", "Units", "s / chunk", "Worst stem", "Result")


def _cells(calibration: Calibration, quality: str) -> list[tuple[list[str], bool]]:
    """(column texts, chosen) per candidate of `calibration` under `quality`'s gate."""
    return [([r.backend, r.precision, r.units,
              "-" if r.seconds is None else f"{r.seconds:.2f}", r.snr_text, r.reason], r.chosen)
            for r in calibration.table(quality)]


class CalibrationPanel(QWidget):
    def __init__(self, key: ModelKey, service: SeparationService | None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.key, self.service = key, service
        self.quality = key.quality
        self.calibration = latest_calibration(key.name)
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.
                                                           ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.run = QPushButton("Calibrate Again")
        self.run.setToolTip("Measure every backend on this computer again (about a minute).")
        self.run.clicked.connect(self._run_or_cancel)
        self.run.setEnabled(service is not None)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.hide()
        self._build()
        if service is not None:
            service.calibrating.connect(self._on_progress)
            service.calibrated.connect(self._on_calibrated)
            service.calibrationFailed.connect(self._on_failed)
        self.show_quality(self.quality)

    def _build(self) -> None:
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.summary)
        layout.addWidget(self.table)
        row = QHBoxLayout()
        row.addWidget(self.bar, 1)
        row.addStretch(0)
        row.addWidget(self.run)
        layout.addLayout(row)

    def show_quality(self, quality: str) -> None:
        """Show the table and the choice under `quality`'s gate."""
        self.quality = quality
        c = self.calibration
        if c is None:
            self.summary.setText(f"{self.key.name} has not been calibrated on this computer "
                                 f"yet: its first separation measures every backend.")
            self.table.setRowCount(0)
            return
        stale = (" Libraries or the system changed since: it is measured again at the next "
                 "separation." if is_stale(c) else "")
        self.summary.setText(f"{c.model} runs on <b>{c.chosen(quality).label}</b>: the fastest "
                             f"of these that stays within {GATES[quality]:.0f} dB of the "
                             f"reference on this computer (measured {c.created[:16]}, "
                             f"{c.seconds:.0f} s).{stale}")
        self._fill(_cells(c, quality))

    def _fill(self, rows: list[tuple[list[str], bool]]) -> None:
        self.table.setRowCount(len(rows))
        bold = QFont()
        bold.setBold(True)
        for r, (texts, chosen) in enumerate(rows):
            for col, text in enumerate(texts):
                item = QTableWidgetItem(text)
                if chosen:
                    item.setFont(bold)
                self.table.setItem(r, col, item)

    @property
    def running(self) -> bool:
        return self.service is not None and self.service.recalibrating is not None

    def _run_or_cancel(self) -> None:
        assert self.service is not None
        if self.running:
            self.service.cancel()
            return
        self.service.recalibrate(self.key)
        self.run.setText("Cancel")
        self.bar.setValue(0)
        self.bar.show()
        self.summary.setText("Measuring every backend on this computer…")

    def _on_progress(self, key: ModelKey, p: CalibrationProgress) -> None:
        if key.name == self.key.name and self.running:
            self.bar.setValue(int(1000 * p.fraction))
            self.summary.setText(f"Measuring {p.candidate}: {p.message}")

    def _finish(self) -> None:
        self.bar.hide()
        self.run.setText("Calibrate Again")

    def _on_calibrated(self, key: ModelKey, calibration: Calibration) -> None:
        if key.name == self.key.name:
            self._finish()
            self.calibration = calibration
            self.show_quality(self.quality)

    def _on_failed(self, key: ModelKey, message: str) -> None:
        if key.name == self.key.name:
            self._finish()
            self.show_quality(self.quality)
            self.summary.setText(message or "The calibration was cancelled; the previous "
                                            "choice stays.")
