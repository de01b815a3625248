"""Preferences (⌘,): passes, quality, backend (with the calibration table and a button to
measure again), compute units, output folder and format, audio device."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.audio_output import output_devices
from app.calibration import CalibrationPanel
from app.settings import Settings
from engine.backends import coreml_supported
from engine.writers import MP3_BITRATES

if TYPE_CHECKING:
    from app.protocol import ModelKey
    from app.service import SeparationService

BACKEND_TITLES = {"auto": "Automatic (the fastest that passes the quality here)",
                  "coreml": "Core ML", "torch": "PyTorch (CPU)"}
QUALITY_TITLES = {"default": "Default (within 60 dB of the reference)",
                  "exact": "Exact (within 70 dB: as demucs)",
                  "fast": "Fast (within 40 dB)"}
UNIT_TITLES = {"all": "Neural Engine, GPU and CPU", "cpu_and_gpu": "GPU and CPU",
               "cpu_only": "CPU only"}
CONTAINER_TITLES = {"wav": "WAV", "flac": "FLAC", "mp3": "MP3"}
DEPTH_TITLES = {"int16": "16-bit", "int24": "24-bit", "float32": "32-bit float"}


def combo(choices: dict[str, str], current: str) -> QComboBox:
    box = QComboBox()
    for key, title in choices.items():
        box.addItem(title, key)
    box.setCurrentIndex(max(0, box.findData(current)))
    return box


def update_depths(container: QComboBox, depth: QComboBox, bitrate: QWidget | None) -> None:
    """Bit depths a container can hold: MP3 has none to choose, FLAC no float."""
    kind = container.currentData()
    model = depth.model()
    for i in range(depth.count()):
        allowed = kind == "wav" or (kind == "flac" and depth.itemData(i) != "float32")
        model.item(i).setEnabled(allowed)  # type: ignore[attr-defined]
    if not model.item(depth.currentIndex()).isEnabled():  # type: ignore[attr-defined]
        depth.setCurrentIndex(depth.findData("int24"))
    depth.setEnabled(kind != "mp3")
    if bitrate is not None:
        bitrate.setEnabled(kind == "mp3")


class PreferencesDialog(QDialog):
    def __init__(self, settings: Settings, parent: QWidget | None = None, *,
                 service: SeparationService | None = None,
                 model_key: ModelKey | None = None) -> None:
        """`service` runs a calibration asked for here (in the worker); `model_key` is the
        model whose calibration is shown (the settings' model if None)."""
        super().__init__(parent)
        self.settings = settings
        self.setWindowTitle("Preferences")
        self._separation_widgets(settings, service, model_key)
        self._output_widgets(settings)
        self.container.currentIndexChanged.connect(
            lambda: update_depths(self.container, self.depth_box, self.bitrate))
        update_depths(self.container, self.depth_box, self.bitrate)
        self._build(self.choose)

    def _separation_widgets(self, settings: Settings, service: SeparationService | None,
                            model_key: ModelKey | None) -> None:
        self.quality = combo(QUALITY_TITLES, settings.quality)
        self.quality.setToolTip("How close to the reference (PyTorch fp32, equal to demucs) "
                                "the stems must be; Automatic picks the fastest backend "
                                "that is, as measured on this computer.")
        if model_key is None:
            from app.protocol import ModelKey

            model_key = ModelKey(settings.model, quality=settings.quality)
        self.calibration = CalibrationPanel(model_key, service)
        self.quality.currentIndexChanged.connect(
            lambda: self.calibration.show_quality(self.quality.currentData()))
        self.shifts = QSpinBox()
        self.shifts.setRange(1, 10)
        self.shifts.setValue(max(1, settings.shifts))
        self.shifts.setSuffix(" pass(es)")
        self.shifts.setToolTip("More passes with shifted audio: slightly better stems, "
                               "proportionally slower (demucs --shifts).")
        self.backend = combo(BACKEND_TITLES, settings.backend)
        self.resume = QCheckBox("Resume interrupted separations automatically")
        self.resume.setChecked(settings.resume_automatically)
        self.units = combo(UNIT_TITLES, settings.compute_units)
        if not coreml_supported():  # Core ML runs on macOS 13+ only
            self.backend.model().item(self.backend.findData("coreml")).setEnabled(False)  # type: ignore[attr-defined]
            self.units.setEnabled(False)
            self.units.setToolTip("Compute units apply to Core ML, on macOS 13 or later.")

    def _output_widgets(self, settings: Settings) -> None:
        self.folder = QLineEdit(str(settings.output_dir))
        self.choose = QPushButton("Choose…")
        self.choose.clicked.connect(self._choose_folder)
        self.container = combo(CONTAINER_TITLES, settings.container)
        self.depth_box = combo(DEPTH_TITLES, settings.sample_format)
        self.bitrate = combo({str(b): f"{b} kbit/s" for b in reversed(MP3_BITRATES)
                              if b >= 128}, str(settings.mp3_bitrate))
        self.device = QComboBox()
        self.device.addItem("System default", "")
        for name in output_devices():
            self.device.addItem(name, name)
        if settings.audio_device and self.device.findData(settings.audio_device) < 0:
            self.device.addItem(f"{settings.audio_device} (not connected)",
                                settings.audio_device)
        self.device.setCurrentIndex(max(0, self.device.findData(settings.audio_device)))

    def _build(self, choose: QPushButton) -> None:
        form = QFormLayout()
        form.addRow(QLabel("<b>Separation</b>"))
        form.addRow("Passes:", self.shifts)
        form.addRow("Quality:", self.quality)
        form.addRow("Backend:", self.backend)
        form.addRow("Compute units:", self.units)
        form.addRow("", self.resume)
        form.addRow(self.calibration)
        form.addRow(QLabel("<b>Export</b>"))
        folder = QHBoxLayout()
        folder.addWidget(self.folder, 1)
        folder.addWidget(choose)
        form.addRow("Output folder:", folder)
        form.addRow("Format:", self.container)
        form.addRow("Bit depth:", self.depth_box)
        form.addRow("MP3 bit rate:", self.bitrate)
        form.addRow(QLabel("<b>Playback</b>"))
        form.addRow("Audio output:", self.device)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                   | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(buttons)

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Output folder", self.folder.text())
        if folder:
            self.folder.setText(folder)

    def accept(self) -> None:
        s = self.settings
        s.shifts = self.shifts.value()
        s.quality = self.quality.currentData()
        s.backend = self.backend.currentData()
        s.compute_units = self.units.currentData()
        s.resume_automatically = self.resume.isChecked()
        s.output_dir = Path(self.folder.text().strip() or str(s.output_dir)).expanduser()
        s.container = self.container.currentData()
        s.sample_format = self.depth_box.currentData()
        s.mp3_bitrate = int(self.bitrate.currentData())
        s.audio_device = self.device.currentData()
        s.sync()
        super().accept()
