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
from engine.m4a import AAC_BITRATES
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
CONTAINER_TITLES = {"wav": "WAV", "flac": "FLAC", "mp3": "MP3", "aac": "AAC (.m4a)",
                    "alac": "Apple Lossless (.m4a)"}
LOSSY = ("mp3", "aac", "stem-aac")
INTEGER_ONLY = ("flac", "alac", "stem-alac")
DEPTH_TITLES = {"int16": "16-bit", "int24": "24-bit", "float32": "32-bit float"}


def combo(choices: dict[str, str], current: str) -> QComboBox:
    box = QComboBox()
    for key, title in choices.items():
        box.addItem(title, key)
    box.setCurrentIndex(max(0, box.findData(current)))
    return box


def update_depths(container: QComboBox, depth: QComboBox, bitrate: QComboBox | None,
                  settings: Settings | None = None) -> None:
    """Bit depths a container can hold: MP3 and AAC have none to choose, FLAC and ALAC no
    float; the bit rates are MP3's or AAC's (the one last chosen for it selected)."""
    kind = container.currentData()
    model = depth.model()
    for i in range(depth.count()):
        allowed = kind == "wav" or (kind in INTEGER_ONLY and depth.itemData(i) != "float32")
        model.item(i).setEnabled(allowed)  # type: ignore[attr-defined]
    if not model.item(depth.currentIndex()).isEnabled():  # type: ignore[attr-defined]
        depth.setCurrentIndex(depth.findData("int24"))
    depth.setEnabled(kind not in LOSSY)
    if bitrate is not None:
        fill_bitrates(bitrate, kind, settings)
        bitrate.setEnabled(kind in LOSSY)


def fill_bitrates(box: QComboBox, kind: str, settings: Settings | None) -> None:
    """MP3's or AAC's bit rates in `box`, keeping the selection if the list is the same."""
    rates = [b for b in reversed(MP3_BITRATES) if b >= 128] if kind == "mp3" else list(
        reversed(AAC_BITRATES))
    if [box.itemData(i) for i in range(box.count())] == [str(b) for b in rates]:
        return
    current = settings.bitrate(kind.removeprefix("stem-")) if settings is not None else None
    box.clear()
    for b in rates:
        box.addItem(f"{b} kbit/s", str(b))
    box.setCurrentIndex(max(0, box.findData(str(current or rates[0]))))


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
            lambda: update_depths(self.container, self.depth_box, self.bitrate, settings))
        update_depths(self.container, self.depth_box, self.bitrate, settings)
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
        self.bitrate = QComboBox()
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
        form.addRow("Bit rate (MP3, AAC):", self.bitrate)
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
        if s.container == "mp3":
            s.mp3_bitrate = int(self.bitrate.currentData())
        elif s.container == "aac":
            s.aac_bitrate = int(self.bitrate.currentData())
        s.audio_device = self.device.currentData()
        s.sync()
        super().accept()
