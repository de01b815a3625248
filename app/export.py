"""Export: stems (all or selected), the current mix (what mute/solo/volume make audible), or
an NI Stems file for Traktor (the original mix and four stems, `engine.stemmp4`), to WAV,
FLAC, MP3, AAC or ALAC, written by `engine.writers` on a worker thread, optionally at the
practice speed and pitch (`app.stretch`, applied to each file's sum before writing). A lane
dragged out of the window is exported to a temporary file first (`drag_export`): Qt has no
file promises, so the file exists before the drop, as a drag from the Finder gives it."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PySide6.QtCore import QMimeData, QObject, QUrl, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
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
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from app.preferences import CONTAINER_TITLES, DEPTH_TITLES, combo, update_depths
from app.settings import Settings, output_format
from app.stretch import Rate, stretch_audio
from app.track import TrackAudio
from engine.errors import Cancelled, DemixerError, OutputExistsError
from engine.logfile import unexpected_message
from engine.stemmp4 import (
    STEM_MP4_SUFFIX,
    StemMap,
    StemMp4Audio,
    default_stem_map,
    format_stem_map,
    parse_stem_map,
    write_stem_mp4,
)
from engine.writers import OutputFormat, export_rate, write_audio

EXPORT_TITLES = {**CONTAINER_TITLES, "stem-aac": "NI Stems for Traktor, AAC (.stem.mp4)",
                 "stem-alac": "NI Stems for Traktor, lossless (.stem.mp4)"}
DRAG_FOLDER = "Demixer drags"  # in the system's temp folder
DRAG_KEEP_S = 24 * 3600.0  # a dragged file's folder is removed after a day (the drop copied it)


@dataclass(frozen=True)
class ExportFile:
    path: Path
    lanes: tuple[int, ...]  # for an NI Stems file: the original mix's lane, its master
    gains: tuple[float, ...]  # one per lane
    rate: Rate = field(default_factory=Rate)  # the practice speed and pitch to apply
    stem_map: StemMap | None = None  # an NI Stems file: its four stems, over lane keys


def rate_name(rate: Rate) -> str:
    """'80 %, +2 st' for a file name or a label; '' at the recording's speed and pitch."""
    bits = [] if rate.speed == 1.0 else [f"{round(rate.speed * 100)} %"]
    bits += [] if rate.semitones == 0 else [f"{rate.semitones:+g} st"]
    return ", ".join(bits)


def at_rate(files: Sequence[ExportFile], rate: Rate) -> list[ExportFile]:
    """`files` played at `rate`: named so ("vocals (80 %, +2 st).wav") and stretched. An NI
    Stems file keeps the recording's tempo and pitch: Traktor sets its own."""
    if rate.identity:
        return list(files)
    tag = rate_name(rate)
    return [f if f.stem_map is not None else
            replace(f, rate=rate, path=f.path.with_name(f"{f.path.stem} ({tag}){f.path.suffix}"))
            for f in files]


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


def stem_map_sources(track: TrackAudio) -> list[str]:
    """The stems an NI Stems mapping can name: the lanes of one stem each (not the two-stem
    mode's instrumental, a sum, nor the original mix)."""
    return [lane.key for lane in track.lanes if not lane.original and lane.parts == (lane.key,)]


def plan_stem_mp4(track: TrackAudio, folder: Path, slots: StemMap) -> ExportFile:
    """One NI Stems file, "TITLE.stem.mp4": the original mix as the master, `slots` as stems."""
    master = next(i for i, lane in enumerate(track.lanes) if lane.original)
    return ExportFile(folder / f"{track.title}{STEM_MP4_SUFFIX}", (master,), (1.0,),
                      stem_map=slots)


def _split_name(path: Path) -> tuple[str, str]:
    """("song", ".stem.mp4") or ("vocals", ".wav"): a number goes before a double extension,
    or Traktor would no longer see a stem file."""
    if path.name.endswith(STEM_MP4_SUFFIX) and len(path.name) > len(STEM_MP4_SUFFIX):
        return path.name[:-len(STEM_MP4_SUFFIX)], STEM_MP4_SUFFIX
    return path.stem, path.suffix


def keep_both(files: Sequence[ExportFile]) -> list[ExportFile]:
    """`files` with a numbered name wherever the name is taken ("vocals (2).wav", "(3)"...,
    "song (2).stem.mp4"), by a file on disk or by one planned earlier in the list: nothing
    is replaced."""
    taken: set[Path] = set()
    out = []
    for file in files:
        path, n = file.path, 1
        base, suffix = _split_name(file.path)
        while path.exists() or path in taken:
            n += 1
            path = file.path.with_name(f"{base} ({n}){suffix}")
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
    if file.stem_map is not None:
        return _write_stem_mp4(track, file, fmt, cancel, overwrite)
    parts, gains = [], []
    for lane, gain in zip(file.lanes, file.gains, strict=True):
        views = track.part_views(lane)
        parts += views
        gains += [gain] * len(views)
    rate, frames = output_rate(track, fmt)
    if not file.rate.identity:
        parts, gains = [stretched_sum(parts, gains, track.samplerate, file.rate)], [1.0]
        frames = None if frames is None else round(frames / file.rate.speed)
    return write_audio(file.path, parts, track.samplerate, rate_out=rate, frames_out=frames,
                       fmt=fmt, gains=gains, overwrite=overwrite, cancel=cancel)


def stretched_sum(parts: Sequence[np.ndarray], gains: Sequence[float], samplerate: int,
                  rate: Rate) -> np.ndarray:
    """sum_i gains[i] * parts[i] ((C, N) float32) at `rate`: (C, ~N / speed) float32."""
    total = np.zeros(np.shape(parts[0]), np.float32)
    for part, gain in zip(parts, gains, strict=True):
        total += np.asarray(part, np.float32) * np.float32(gain)
    return np.ascontiguousarray(stretch_audio(total.T, samplerate, rate).T)


def _write_stem_mp4(track: TrackAudio, file: ExportFile, fmt: OutputFormat,
                    cancel: threading.Event | None, overwrite: bool) -> Path:
    assert file.stem_map is not None
    [master] = track.part_views(file.lanes[0])
    stems = {lane.key: track.part_views(i)[0] for i, lane in enumerate(track.lanes)
             if lane.key in stem_map_sources(track)}
    rate, frames = output_rate(track, fmt)
    tags = {"title": track.title}
    return write_stem_mp4(file.path, StemMp4Audio(master, stems, track.samplerate, tags),
                          file.stem_map, fmt, rate_out=rate, frames_out=frames,
                          overwrite=overwrite, cancel=cancel)


def drag_export(track: TrackAudio, lane: int, fmt: OutputFormat,
                root: Path | None = None) -> QMimeData:
    """Write lane `lane` as "TITLE - Lane.EXT" under `root` (the system's temp folder by
    default) and return the drag's data: that file's URL. The same lane dragged again in the
    same format reuses the file (AAC takes seconds per minute of audio; a finished song's
    stems never change). Raises DemixerError (one sentence) if it cannot be written; folders
    of drags older than a day are removed first."""
    root = root or Path(tempfile.gettempdir()) / DRAG_FOLDER
    _remove_old_drags(root)
    key = repr((track.title, str(track.stems.directory), lane, track.frames, fmt))
    folder = root / hashlib.sha256(key.encode()).hexdigest()[:16]
    name = f"{track.title} - {track.lanes[lane].title}.{fmt.ext}".replace("/", "-")
    path = folder / name
    if not path.is_file():
        write_file(track, ExportFile(path, (lane,), (1.0,)), fmt)
    os.utime(folder)  # kept a day from its last drag
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    return mime


def _remove_old_drags(root: Path) -> None:
    cutoff = time.time() - DRAG_KEEP_S
    try:
        old = [p for p in root.iterdir() if p.is_dir() and p.stat().st_mtime < cutoff]
    except OSError:
        return
    for folder in old:
        shutil.rmtree(folder, ignore_errors=True)


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
    """What to export, in which format (bit rate, depth, NI Stems mapping), where."""

    def __init__(self, track: TrackAudio, gains: Sequence[float], selected: Sequence[int],
                 settings: Settings, parent: QWidget | None = None, *,
                 mix_first: bool = False, rate: Rate | None = None) -> None:
        """`mix_first`: start from "The current mix" (a lane is muted or soloed); `rate`:
        the practice speed and pitch, offered as an option when it is not 100 %, 0 st."""
        super().__init__(parent)
        self.track, self.gains, self.settings = track, list(gains), settings
        self.rate = rate or Rate()
        self.setWindowTitle(f"Export “{track.title}”")
        self._what_widgets(track, gains, selected, mix_first)
        self._format_widgets(track, settings)
        self.folder = QLineEdit(str(settings.output_dir / track.title))
        self._build()
        self._kind_changed()

    def _what_widgets(self, track: TrackAudio, gains: Sequence[float], selected: Sequence[int],
                      mix_first: bool) -> None:
        """What to export: all stems, some, or the mix; at the practice rate or not."""
        self.all = QRadioButton("All stems")
        self.some = QRadioButton("Selected stems:")
        self.mix = QRadioButton(f"The current mix ({mix_name(track, gains)})")
        group = QButtonGroup(self)
        for button in (self.all, self.some, self.mix):
            group.addButton(button)
        self.mix.setEnabled(any(g > 0 for g in gains))
        (self.mix if mix_first and self.mix.isEnabled() else self.all).setChecked(True)
        self.at_rate = QCheckBox(f"At the practice speed and pitch ({rate_name(self.rate)})")
        self.at_rate.setVisible(not self.rate.identity)
        self.at_rate.setChecked(not self.rate.identity)
        self.checks: dict[int, QCheckBox] = {}
        for i, lane in enumerate(track.lanes):
            if not lane.original:
                self.checks[i] = QCheckBox(lane.title)
                self.checks[i].setChecked(i in selected)
                self.checks[i].toggled.connect(lambda _=False: self.some.setChecked(True))

    def _format_widgets(self, track: TrackAudio, settings: Settings) -> None:
        """The format, bit depth and bit rate, and an NI Stems file's mapping."""
        self.container = combo(EXPORT_TITLES, settings.container)
        if len(stem_map_sources(track)) < 4:  # e.g. the two-stem mode: nothing to map
            for kind in ("stem-aac", "stem-alac"):
                self.container.model().item(  # type: ignore[attr-defined]
                    self.container.findData(kind)).setEnabled(False)
        self.depth_box = combo(DEPTH_TITLES, settings.sample_format)
        self.bitrate = QComboBox()
        self.stem_map = QLineEdit(self._default_map())
        self.stem_map.setToolTip("NI's four stems in order, separated by “;”; join stems with "
                                 "“+”, name a slot with “Name=”, e.g. "
                                 "drums;bass;Melody=other+guitar+piano;vocals")
        self.map_hint = QLabel()
        self.map_hint.setWordWrap(True)
        self.stem_map.textChanged.connect(self._show_map)
        self.container.currentIndexChanged.connect(self._kind_changed)

    def _default_map(self) -> str:
        try:
            return format_stem_map(default_stem_map(stem_map_sources(self.track)))
        except DemixerError:
            return ""

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
        form.addRow("Bit rate:", self.bitrate)
        form.addRow("Traktor stems:", self.stem_map)
        form.addRow("", self.map_hint)
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
        layout.addWidget(self.at_rate)
        layout.addLayout(form)
        layout.addWidget(buttons)

    @property
    def ni_stems(self) -> bool:
        return str(self.container.currentData()).startswith("stem-")

    def _kind_changed(self) -> None:
        """NI Stems write the whole song: the choice of stems gives way to the mapping."""
        update_depths(self.container, self.depth_box, self.bitrate, self.settings)
        ni = self.ni_stems
        for button in (self.all, self.some, *self.checks.values()):
            button.setEnabled(not ni)
        self.mix.setEnabled(not ni and any(g > 0 for g in self.gains))
        self.stem_map.setEnabled(ni)
        self._show_map()

    def slots(self) -> StemMap:
        """The mapping as typed (DemixerError, one sentence, if it does not fit this song)."""
        text = self.stem_map.text().strip()
        if not text:
            raise DemixerError("NI Stems need four stems and this song has fewer; export its "
                               "stems as files instead.")
        return parse_stem_map(text, stem_map_sources(self.track))

    def _show_map(self) -> None:
        if not self.ni_stems:
            self.map_hint.setText("Used with NI Stems: the original mix plays as the master.")
            self.map_hint.setStyleSheet("color: palette(mid);")
            return
        try:
            slots = self.slots()
        except DemixerError as err:
            self.map_hint.setText(str(err))
            self.map_hint.setStyleSheet("color: #C0392B;")
            return
        self.map_hint.setText(" · ".join(f"{n + 1} {s.name} = {' + '.join(s.sources)}"
                                         for n, s in enumerate(slots)))
        self.map_hint.setStyleSheet("")

    def accept(self) -> None:
        if self.ni_stems:
            try:
                self.slots()
            except DemixerError:
                self.stem_map.setFocus()
                return  # the hint says why
        super().accept()

    def _choose(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export to", self.folder.text())
        if folder:
            self.folder.setText(folder)

    def fmt(self) -> OutputFormat:
        bitrate = self.bitrate.currentData()
        return output_format(self.container.currentData(), self.depth_box.currentData(),
                             int(bitrate) if bitrate else 320)

    def files(self) -> list[ExportFile]:
        files = self._planned()
        return at_rate(files, self.rate) if self.at_rate.isChecked() else files

    def _planned(self) -> list[ExportFile]:
        folder, fmt = Path(self.folder.text()).expanduser(), self.fmt()
        if self.ni_stems:
            return [plan_stem_mp4(self.track, folder, self.slots())]
        if self.mix.isChecked():
            mix = plan_mix(self.track, self.gains, folder, fmt)
            return [mix] if mix else []
        if self.all.isChecked():
            return plan_stems(self.track, list(self.checks), folder, fmt)
        return plan_stems(self.track, [i for i, b in self.checks.items() if b.isChecked()],
                          folder, fmt)
