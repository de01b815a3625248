"""The main window: drop target, sidebar (queue, library), track view, transport, menus.

`MainWindow` composes its parts: `app.transport.SongTransport` (the song shown, play and
seek, the tick), `app.actions.WindowActions` (actions, toolbar, menus); it builds the widgets,
wires the signals, and keeps adding files, export, the library's commands, the dialogs and
the window's state. The threads and who owns what: docs/architecture.md.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QEvent, QTimer
from PySide6.QtGui import (
    QCloseEvent,
    QDragEnterEvent,
    QDropEvent,
    QGuiApplication,
)
from PySide6.QtWidgets import (
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QSplitter,
    QStackedWidget,
    QTabWidget,
)

from app.actions import WindowActions
from app.audio_output import AudioOutput
from app.export import ExportDialog, Exporter, ExportFile, keep_both
from app.firstrun import ModelDialog
from app.library import Damaged, Library, LibraryEntry, complete_newest_first
from app.mixer import Mixer
from app.peaks import PeakBuilder
from app.preferences import PreferencesDialog
from app.protocol import ModelKey
from app.queue import QueueItem, SeparationQueue, State
from app.reveal import reveal, reveal_title
from app.service import SeparationService
from app.settings import Settings
from app.sidebar import LibraryView, QueueView
from app.track import TrackAudio
from app.trackview import DropHint, TrackView
from app.transport import SongTransport
from engine.decode import find_audio_files

if TYPE_CHECKING:
    from engine.calibrate import CalibrationProgress
    from engine.coreml.convert import ConvertProgress
    from engine.writers import OutputFormat

TICK_MS = 33  # the GUI's poll of the mixer, the peaks and the ready mark (~30 Hz)
# NB: the GIL. Every Python slot or paintEvent override must take the GIL back from the
# worker threads (separation, peaks, feeder); CPython makes a waiting thread wait up to the
# switch interval (5 ms by default) each time, so a repaint that runs 15 Python paintEvents
# behind a busy worker could wait 75 ms. Half a millisecond keeps that under 10 ms.
SWITCH_INTERVAL_S = 0.0005
# How long a quit waits for the worker to finish its chunk and checkpoint (a real-model
# chunk takes seconds on a busy CPU; the niced worker gets the CPU last): else terminated.
STOP_WAIT_S = 30.0


class MainWindow(SongTransport, WindowActions, QMainWindow):
    def __init__(self, settings: Settings, library: Library | None = None) -> None:
        super().__init__()
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        self.settings = settings
        self.library = library or Library()
        self.tidied = self.library.tidy()  # before the queue: nothing of ours runs yet
        self.service = SeparationService(self)
        self.queue = SeparationQueue(self.library, self.service, self)
        self.mixer = Mixer()
        self.mixer.start_feeder()
        self.output = AudioOutput(self.mixer)
        self.exporter = Exporter(self)
        self.track: TrackAudio | None = None
        self.shown_item: QueueItem | None = None
        self.shown_entry: LibraryEntry | None = None
        self.builder: PeakBuilder | None = None
        self.model_dialog: ModelDialog | None = None
        self._asking: QMessageBox | None = None  # the question `ask` shows now
        self._force_quit = False  # a second SIGINT/SIGTERM: no question
        self.setWindowTitle("Demixer")
        self.setAcceptDrops(True)
        self.resize(1280, 800)
        self._build_central()
        self._build_actions()
        self._build_toolbar()
        self._build_menus()
        self._connect()
        self.timer = QTimer(self)
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self._tick)
        self.timer.start()
        self.refresh_library()
        self._list_interrupted()
        self._restore_state()
        self._update_transport()
        self.track_view.set_decibels(self.settings.waveform_decibels)
        self.track_view.resize(self.stack.size())
        self.track_view.warm_up()

    # --- building ------------------------------------------------------------------------

    def _build_central(self) -> None:
        self.track_view = TrackView()
        self.drop_hint = DropHint()
        self.stack = QStackedWidget()
        self.stack.addWidget(self.drop_hint)
        self.stack.addWidget(self.track_view)
        self.queue_view = QueueView(self.queue)
        self.library_view = LibraryView()
        self.sidebar = QTabWidget()
        self.sidebar.setDocumentMode(True)
        self.sidebar.addTab(self.queue_view, "Queue")
        self.sidebar.addTab(self.library_view, "Library")
        self.sidebar.setMinimumWidth(220)
        self.splitter = QSplitter()
        self.splitter.addWidget(self.sidebar)
        self.splitter.addWidget(self.stack)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([270, 1010])
        self.setCentralWidget(self.splitter)
        self.time_label = QLabel("0:00.0 / 0:00.0")
        self.time_label.setStyleSheet("font-family: monospace; font-size: 14px; padding: 0 8px;")
        self.output_label = QLabel()
        self.statusBar().addPermanentWidget(self.output_label)

    def _connect(self) -> None:
        q = self.queue
        q.trackStarted.connect(self._on_track_started)
        q.finished.connect(self._on_item_finished)
        q.changed.connect(self._on_item_changed)
        q.removed.connect(self._on_item_removed)
        q.modelNeeded.connect(self.show_model_dialog)
        self.service.converting.connect(self._on_converting)
        self.service.calibrating.connect(self._on_calibrating)
        q.notice.connect(lambda item, text: self.statusBar().showMessage(
            f"{item.path.name}: {text}", 15000))
        self.queue_view.showRequested.connect(self.show_item)
        lib = self.library_view
        lib.openRequested.connect(self.show_entry)
        lib.exportRequested.connect(self.export_entry)
        lib.revealRequested.connect(lambda e: self.reveal(e.folder))
        lib.deleteRequested.connect(self.delete_entry)
        lib.damagedRequested.connect(self.resolve_damaged)
        self.track_view.gainsChanged.connect(self.mixer.set_gains)
        self.track_view.timeline.seekRequested.connect(self.seek)
        self.model_box.currentIndexChanged.connect(
            lambda: setattr(self.settings, "model", self.model_box.currentData()))
        self.two_stems_box.toggled.connect(lambda on: setattr(self.settings, "two_stems", on))
        self.exporter.finished.connect(self._on_exported)
        self.exporter.failed.connect(self._on_export_failed)
        self.exporter.progress.connect(lambda n, total: self.statusBar().showMessage(
            f"Exporting {n + 1} of {total}…"))
        QGuiApplication.styleHints().colorSchemeChanged.connect(lambda _: self.update())

    # --- adding files ------------------------------------------------------------------------

    def model_key(self) -> ModelKey:
        s = self.settings
        return ModelKey(self.model_box.currentData() or s.model, s.backend, s.compute_units,
                        max(1, s.shifts), s.segment, s.quality)

    def open_paths(self, paths: list[str] | list[Path]) -> list[QueueItem]:
        """Queue files and folders, as a drop does. A song already in the library (the same
        file, unchanged, same model) opens from there instead; "Separate Again" is offered."""
        if not paths:
            return []
        for path in paths:
            self.settings.add_recent(Path(path).expanduser().resolve())
        key, two_stems = self.model_key(), self.two_stems_box.isChecked()
        files = [Path(os.path.abspath(p)) for p in find_audio_files(paths)]
        if not files:
            names = ", ".join(Path(p).name for p in paths)
            self.statusBar().showMessage(f"No audio files in {names}.", 8000)
            return []
        known = {f: e for f in files if (e := self.library.find(f, key.name, two_stems))}
        items = self.queue.add([f for f in files if f not in known], key, two_stems)
        if items:
            self.sidebar.setCurrentWidget(self.queue_view)
            self.statusBar().showMessage(f"Added {len(items)} file(s) to the queue.", 4000)
        if known:
            self.show_entry(next(iter(known.values())))
            if not items:
                self.sidebar.setCurrentWidget(self.library_view)
            self.offer_separate_again(list(known), key, two_stems)
        return items

    def offer_separate_again(self, files: list[Path], key: ModelKey, two_stems: bool) -> None:
        """A non-blocking note that songs come from the library, with "Separate Again"."""
        names = ", ".join(f"“{f.name}”" for f in files[:3]) + (" …" if len(files) > 3 else "")
        box = QMessageBox(self)
        box.setWindowTitle("Already separated")
        box.setText(f"{names} {'is' if len(files) == 1 else 'are'} already in the library "
                    f"({key.name}); opened from there. Separate again? The new stems replace "
                    "the ones in the library once they are done.")
        again = box.addButton("Separate Again", QMessageBox.ButtonRole.ActionRole)
        box.addButton(QMessageBox.StandardButton.Ok)
        box.finished.connect(lambda _: self.queue.add(files, key, two_stems)
                             if box.clickedButton() is again else None)
        box.open()
        self.again_box = box

    def choose_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(
            self, "Open songs", str(Path.home() / "Music"),
            "Audio (*.wav *.flac *.mp3 *.m4a *.aac *.ogg *.opus *.aif *.aiff *.caf *.wma);;"
            "All files (*)")
        self.open_paths(files)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        urls = event.mimeData().urls() if event.mimeData().hasUrls() else []
        if any(u.isLocalFile() for u in urls):
            event.acceptProposedAction()

    def dragMoveEvent(self, event: QDragEnterEvent) -> None:  # type: ignore[override]
        self.dragEnterEvent(event)

    def dropEvent(self, event: QDropEvent) -> None:
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.open_paths(paths)

    # --- export, library, dialogs ---------------------------------------------------------

    def export_entry(self, entry: LibraryEntry) -> None:
        self.show_entry(entry)
        self.export()

    def export(self) -> None:
        entry, track = self._export_entry(), self.track
        if entry is None or track is None or self.exporter.busy:
            return
        dialog = ExportDialog(track, list(self.track_view.gains()),
                              self.track_view.selected_lanes(),
                              self.settings, self)
        if dialog.exec() != ExportDialog.DialogCode.Accepted:
            return
        self.start_export(entry, dialog.files(), dialog.fmt())

    def start_export(self, entry: LibraryEntry, files: list[ExportFile],
                     fmt: OutputFormat) -> None:
        if not files:
            self.statusBar().showMessage("Nothing to export: every lane is silent.", 6000)
            return
        chosen = self.existing_files_answer(files)
        if chosen is None:
            return
        files, overwrite = chosen
        self.exporter.start(entry.open_track(), files, fmt, overwrite)
        self._update_transport()

    def existing_files_answer(self, files: list[ExportFile]
                              ) -> tuple[list[ExportFile], bool] | None:
        """Files that exist already are replaced, or kept beside numbered new ones, as the
        person answers; None for Cancel. (files to write, whether to replace)"""
        existing = [f.path for f in files if f.path.exists()]
        if not existing:
            return files, False
        names = ", ".join(f"“{p.name}”" for p in existing[:4]) + (
            f" and {len(existing) - 4} more" if len(existing) > 4 else "")
        first = keep_both([f for f in files if f.path == existing[0]])[0].path.name
        answer = self.ask("Replace existing files?",
                          f"{names} already {'exists' if len(existing) == 1 else 'exist'} in "
                          f"{existing[0].parent}. Replace, or keep both (the new files get a "
                          f"number, e.g. “{first}”)?", ["Replace", "Keep Both", "Cancel"],
                          default="Keep Both")
        if answer == "Replace":
            return files, True
        if answer == "Keep Both":
            return keep_both(files), False
        return None

    def _on_exported(self, paths: list[Path]) -> None:
        self._update_transport()
        if not paths:
            self.statusBar().clearMessage()
            return
        self.statusBar().showMessage(f"Exported {len(paths)} file(s) to {paths[0].parent}.",
                                     8000)
        box = QMessageBox(self)
        box.setWindowTitle("Export finished")
        box.setText(f"Exported {len(paths)} file(s) to {paths[0].parent}.")
        show = box.addButton(reveal_title(), QMessageBox.ButtonRole.ActionRole)
        box.addButton(QMessageBox.StandardButton.Ok)
        box.finished.connect(lambda _: self.reveal(paths[0]) if box.clickedButton() is show
                             else None)
        box.open()

    def _on_export_failed(self, message: str) -> None:
        self._update_transport()
        self.statusBar().showMessage(message, 10000)

    def reveal(self, path: Path) -> None:
        """Show `path` in the file manager, or say in the status bar why it cannot."""
        problem = reveal(path)
        if problem:
            self.statusBar().showMessage(problem, 10000)

    def reveal_current(self) -> None:
        entry = self._export_entry()
        if entry is not None:
            self.reveal(entry.folder)

    def refresh_library(self) -> None:
        entries, damaged = self.library.listing()
        self.library_view.set_entries(complete_newest_first(entries), damaged)
        if self.shown_item is None:
            self.library_view.select(self.shown_entry)

    def resolve_damaged(self, damaged: Damaged) -> None:
        """A library folder that cannot be read: the person deletes it or keeps it."""
        answer = self.ask("Damaged library folder",
                          f"The library folder {damaged.folder} cannot be read: "
                          f"{damaged.reason}. Delete it with everything in it, or keep it "
                          "as it is?", ["Delete", "Keep"], default="Keep")
        if answer == "Delete":
            self.library.delete_folder(damaged.folder)
            self.refresh_library()
        self.library_view.select(self.shown_entry if self.shown_item is None else None)

    def ask(self, title: str, text: str, buttons: list[str], default: str | None = None) -> str:
        """A modal question; the text of the button chosen ("" if the box was closed).
        The one place the window waits for an answer: tests replace it."""
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Icon.Question)
        box.setWindowTitle(title)
        box.setText(text)
        made = {}
        for name in buttons:
            role = (QMessageBox.ButtonRole.RejectRole if name == "Cancel"
                    else QMessageBox.ButtonRole.AcceptRole if name == buttons[0]
                    else QMessageBox.ButtonRole.ActionRole)
            button = box.addButton(name, role)
            made[button] = name
            if name == default:
                box.setDefaultButton(button)
            if name in ("Cancel", "Keep"):
                box.setEscapeButton(button)
        self._asking = box
        try:
            box.exec()
        finally:
            self._asking = None
        return made.get(box.clickedButton(), "")  # type: ignore[call-overload]

    def delete_entry(self, entry: LibraryEntry) -> None:
        answer = QMessageBox.question(
            self, "Delete from library",
            f"Delete the stems of “{entry.title}” ({entry.model}) from the library?\n"
            "The original file is not touched.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
            QMessageBox.StandardButton.Cancel)
        if answer != QMessageBox.StandardButton.Yes:
            return
        if self.shown_entry is not None and self.shown_entry.folder == entry.folder:
            self.show_track(None)
        self.library.delete(entry)
        self.refresh_library()

    def show_model_dialog(self, key: ModelKey, converting: bool = False,
                          calibrating: bool = False) -> ModelDialog | None:
        """The first-run dialog: downloads `key` (or, `converting` / `calibrating`, follows
        a conversion or a calibration that has started)."""
        if self.model_dialog is not None:
            return None
        dialog = ModelDialog(key, self.service, self, converting=converting,
                             calibrating=calibrating)
        dialog.declined.connect(self.queue.model_declined)
        dialog.finished.connect(lambda _: setattr(self, "model_dialog", None))
        self.model_dialog = dialog
        self.queue.dialog_opened(key)
        dialog.open()
        if converting or calibrating:
            dialog.follow()
        else:
            dialog.start()
        return dialog

    def _on_converting(self, key: ModelKey, progress: ConvertProgress) -> None:
        """A conversion started without the dialog (the checkpoint was there): show it."""
        if self.model_dialog is None:
            dialog = self.show_model_dialog(key, converting=True)
            if dialog is not None:
                dialog.show_conversion(key, progress)

    def _on_calibrating(self, key: ModelKey, progress: CalibrationProgress) -> None:
        """A first-run calibration started without the dialog: show it (one asked for in
        Preferences shows its progress there)."""
        if self.model_dialog is None and self.service.recalibrating is None:
            dialog = self.show_model_dialog(key, calibrating=True)
            if dialog is not None:
                dialog.show_calibration(key, progress)

    def preferences(self) -> None:
        dialog = PreferencesDialog(self.settings, self, service=self.service,
                                   model_key=self.model_key())
        if dialog.exec() == PreferencesDialog.DialogCode.Accepted and self.output.is_open:
            self.output.close()  # reopened with the chosen device on the next play
            self.mixer.pause()
            self._update_transport()

    def set_decibels(self, on: bool) -> None:
        self.settings.waveform_decibels = on
        self.track_view.set_decibels(on)

    def about(self) -> None:
        QMessageBox.about(self, "About Demixer",
                          "<b>Demixer</b><br>Stem separation with HTDemucs, on your "
                          f"{'Mac' if sys.platform == 'darwin' else 'computer'}.")

    # --- window state ------------------------------------------------------------------------

    def _list_interrupted(self) -> None:
        """Separations a quit or crash stopped go in the queue to resume (by themselves if
        the preference says so); damaged library folders are pointed out."""
        items = self.queue.add_interrupted(self.tidied.interrupted)
        if items and self.settings.resume_automatically:
            for item in items:
                self.queue.resume(item)
        notes = []
        if items:
            notes.append(f"{len(items)} interrupted separation(s) can resume: see the Queue.")
        if self.tidied.damaged:
            notes.append(f"{len(self.tidied.damaged)} library folder(s) cannot be read: see "
                         "the Library.")
        if notes:
            self.statusBar().showMessage(" ".join(notes), 15000)

    def _restore_state(self) -> None:
        geometry = self.settings.window_state("geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        state = self.settings.window_state("state")
        if state is not None:
            self.restoreState(state)
        splitter = self.settings.window_state("splitter")
        if splitter is not None:
            self.splitter.restoreState(splitter)

    def closeEvent(self, event: QCloseEvent) -> None:
        if not self.confirm_quit():
            event.ignore()
            return
        self.settings.set_window_state("geometry", self.saveGeometry())
        self.settings.set_window_state("state", self.saveState())
        self.settings.set_window_state("splitter", self.splitter.saveState())
        self.settings.sync()
        self.hide()  # gone at once for the person; the worker may take a chunk to stop
        self.shutdown(STOP_WAIT_S)
        super().closeEvent(event)

    def confirm_quit(self) -> bool:
        """Quitting while songs separate or wait asks first; True to go ahead."""
        if self._force_quit or not self.queue.busy:
            return True
        running = next((i for i in self.queue.items if i.state == State.SEPARATING), None)
        waiting = sum(i.state in (State.QUEUED, State.PREPARING) for i in self.queue.items)
        text = ""
        if running is not None:
            done = f" ({running.fraction:.0%} done)" if running.stage == "separating" else ""
            text = (f"“{running.path.name}” is being separated{done}. If you quit now, it "
                    "resumes where it stopped when you open Demixer again.")
        if waiting:
            text += (f"{' ' if text else ''}{waiting} song(s) waiting in the queue will need "
                     "to be added again.")
        answer = self.ask("Quit Demixer?", text, ["Quit", "Cancel"], default="Cancel")
        return answer == "Quit" or self._force_quit

    def request_quit(self) -> None:
        """SIGINT/SIGTERM: close as ⌘Q would (asking first); a second one while the question
        is open answers it with Quit."""
        if self._asking is not None and self._asking.windowTitle() == "Quit Demixer?":
            self._force_quit = True
            self._asking.done(0)  # the question returns, and confirm_quit sees the force
            return
        self.close()

    def shutdown(self, wait_s: float = 5.0) -> None:
        """Stop everything this window started (threads, stream, jobs). A running
        separation is left resumable (its stems stay in the library folder); its worker
        gets `wait_s` seconds to finish the chunk it is on."""
        self.timer.stop()
        self.queue.suspend()
        self.service.close(wait_s)  # the worker stops its job (keeping its checkpoint)
        self.queue.release_all()
        self.exporter.cancel()
        self.output.close()
        self._unload()
        self.mixer.stop_feeder()

    def changeEvent(self, event: QEvent) -> None:
        if event.type() == QEvent.Type.PaletteChange:  # light/dark switched
            self._transport_icons()
            self.track_view.update()
        super().changeEvent(event)

