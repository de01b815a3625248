"""Export: stems (all or selected) and the current mix (what mute/solo/volume make audible)
to WAV/FLAC/MP3, written by `engine.writers.write_audio` on a worker thread."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from app.preferences import CONTAINER_TITLES, DEPTH_TITLES, combo, update_depths
from app.settings import Settings, output_format
from app.track import TrackAudio
from engine.errors import Cancelled, DemixerError, OutputExistsError
from engine.logfile import unexpected_message
from engine.writers import OutputFormat, export_rate, write_audio


@dataclass(frozen=True)
class ExportFile:
    path: Path
    lanes: tuple[int, ...]
    gains: tuple[float, ...]  # one per lane


def mix_name(track: TrackAudio, gains: Sequence[float]) -> str:
    """A file name for a mix: 'no vocals', 'drums+bass', 'full mix', 'original'..."""
    stems = [i for i, lane in enumerate(track.lanes) if not lane.original]
    audible = [i for i in stems if gains[i] > 0]
    original = any(gains[i] > 0 for i, lane in enumerate(track.lanes) if lane.original)
    if original and not audible:
        return "original"
    if len(audible) == len(stems):
        name = "full mix"
    elif len(audible) == len(stems) - 1:
        missing = next(i for i in stems if i not in audible)
        name = f"no {track.lanes[missing].key}"
    else:
        name = "+".join(track.lanes[i].key for i in audible)
    return name + (" + original" if original else "")


def plan_stems(track: TrackAudio, lanes: Sequence[int], folder: Path,
               fmt: OutputFormat) -> list[ExportFile]:
    return [ExportFile(folder / f"{track.lanes[i].key}.{fmt.ext}", (i,), (1.0,)) for i in lanes]


def plan_mix(track: TrackAudio, gains: Sequence[float], folder: Path,
             fmt: OutputFormat) -> ExportFile | None:
    """The current mix as one file, or None if everything is silent."""
    lanes = tuple(i for i in range(len(track.lanes)) if gains[i] > 0)
    if not lanes:
        return None
    name = f"{track.title} ({mix_name(track, gains)}).{fmt.ext}"
    return ExportFile(folder / name, lanes, tuple(float(gains[i]) for i in lanes))


def keep_both(files: Sequence[ExportFile]) -> list[ExportFile]:
    """`files` with a numbered name wherever the name is taken ("vocals (2).wav", "(3)"...),
    by a file on disk or by one planned earlier in the list: nothing is replaced."""
    taken: set[Path] = set()
    out = []
    for file in files:
        path, n = file.path, 1
        while path.exists() or path in taken:
            n += 1
            path = file.path.with_name(f"{file.path.stem} ({n}){file.path.suffix}")
        taken.add(path)
        out.append(replace(file, path=path))
    return out


def output_rate(track: TrackAudio, fmt: OutputFormat) -> tuple[int, int]:
    """Export at the song's own rate and length, lowered to a rate the format carries: the
    engine's rule (`engine.writers.export_rate`), as `demixer separate` writes."""
    return export_rate(fmt, (track.source_rate, track.source_frames),
                       (track.samplerate, track.frames))


def write_file(track: TrackAudio, file: ExportFile, fmt: OutputFormat,
               cancel: threading.Event | None = None, overwrite: bool = False) -> Path:
    """Write one file; an existing one is replaced only with `overwrite` (the person said
    "Replace"), and then only once the new one is complete (engine.writers)."""
    parts, gains = [], []
    for lane, gain in zip(file.lanes, file.gains, strict=True):
        views = track.part_views(lane)
        parts += views
        gains += [gain] * len(views)
    rate, frames = output_rate(track, fmt)
    return write_audio(file.path, parts, track.samplerate, rate_out=rate, frames_out=frames,
                       fmt=fmt, gains=gains, overwrite=overwrite, cancel=cancel)


class Exporter(QObject):
    """Writes files on a daemon thread; signals are queued to the GUI thread."""

    progress = Signal(int, int)  # files done, files in all
    finished = Signal(list)  # written paths
    failed = Signal(str)  # one sentence

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._cancel = threading.Event()
        self.busy = False

    def start(self, track: TrackAudio, files: list[ExportFile], fmt: OutputFormat,
              overwrite: bool = False) -> None:
        """Write `files` from `track` (which the exporter closes when done); existing files
        are replaced only with `overwrite`."""
        self._cancel = threading.Event()
        self.busy = True
        threading.Thread(target=self._run, args=(track, files, fmt, self._cancel, overwrite),
                         name="demixer-export", daemon=True).start()

    def cancel(self) -> None:
        self._cancel.set()

    def _run(self, track: TrackAudio, files: list[ExportFile], fmt: OutputFormat,
             cancel: threading.Event, overwrite: bool) -> None:
        written: list[Path] = []
        try:
            for n, file in enumerate(files):
                self.progress.emit(n, len(files))
                written.append(write_file(track, file, fmt, cancel, overwrite))
            self.busy = False
            self.finished.emit(written)
        except Cancelled:
            self.busy = False
            self.failed.emit("Export cancelled.")
        except OutputExistsError:  # it appeared after the question: never replaced
            self.busy = False
            self.failed.emit(f"{files[len(written)].path} appeared while exporting and was "
                             "not replaced; export again to choose what to do.")
        except DemixerError as err:
            self.busy = False
            self.failed.emit(str(err))
        except Exception as err:  # a bug or a library's surprise: logged, one line
            self.busy = False
            self.failed.emit(unexpected_message(str(files[len(written)].path), err))
        finally:
            self.busy = False
            track.close()


class ExportDialog(QDialog):
    """What to export, in which format, where."""

    def __init__(self, track: TrackAudio, gains: Sequence[float], selected: Sequence[int],
                 settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.track, self.gains, self.settings = track, list(gains), settings
        self.setWindowTitle(f"Export “{track.title}”")
        self.all = QRadioButton("All stems")
        self.some = QRadioButton("Selected stems:")
        self.mix = QRadioButton(f"The current mix ({mix_name(track, gains)})")
        group = QButtonGroup(self)
        for button in (self.all, self.some, self.mix):
            group.addButton(button)
        self.all.setChecked(True)
        self.mix.setEnabled(any(g > 0 for g in gains))
        self.checks: dict[int, QCheckBox] = {}
        for i, lane in enumerate(track.lanes):
            if not lane.original:
                self.checks[i] = QCheckBox(lane.title)
                self.checks[i].setChecked(i in selected)
                self.checks[i].toggled.connect(lambda _=False: self.some.setChecked(True))
        self.container = combo(CONTAINER_TITLES, settings.container)
        self.depth_box = combo(DEPTH_TITLES, settings.sample_format)
        self.container.currentIndexChanged.connect(
            lambda: update_depths(self.container, self.depth_box, None))
        update_depths(self.container, self.depth_box, None)
        self.folder = QLineEdit(str(settings.output_dir / track.title))
        self._build()

    def _build(self) -> None:
        stems = QHBoxLayout()
        stems.addSpacing(20)
        for box in self.checks.values():
            stems.addWidget(box)
        stems.addStretch(1)
        choose = QPushButton("Choose…")
        choose.clicked.connect(self._choose)
        where = QHBoxLayout()
        where.addWidget(self.folder, 1)
        where.addWidget(choose)
        form = QFormLayout()
        form.addRow("Format:", self.container)
        form.addRow("Bit depth:", self.depth_box)
        form.addRow("Folder:", where)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        buttons.addButton("Export", QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        for widget in (self.all, self.some):
            layout.addWidget(widget)
        layout.addLayout(stems)
        layout.addWidget(self.mix)
        layout.addLayout(form)
        layout.addWidget(buttons)

    def _choose(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export to", self.folder.text())
        if folder:
            self.folder.setText(folder)

    def fmt(self) -> OutputFormat:
        return output_format(self.container.currentData(), self.depth_box.currentData(),
                             self.settings.mp3_bitrate)

    def files(self) -> list[ExportFile]:
        folder, fmt = Path(self.folder.text()).expanduser(), self.fmt()
        if self.mix.isChecked():
            mix = plan_mix(self.track, self.gains, folder, fmt)
            return [mix] if mix else []
        if self.all.isChecked():
            return plan_stems(self.track, list(self.checks), folder, fmt)
        return plan_stems(self.track, [i for i, b in self.checks.items() if b.isChecked()],
                          folder, fmt)
