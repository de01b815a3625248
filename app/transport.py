"""The song shown and its transport (a part of `MainWindow`, see app.mainwindow).

It owns what is shown (`track`, `shown_item`, `shown_entry`) and its peaks builder: showing a
song unloads the previous one (the builder stopped, the mixer released, the files closed),
loads the new one into the mixer and the track view. The transport is play/pause, seek, and
the ~30 Hz tick that moves the playhead and the ready mark. The queue's news about the song
shown land here too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtGui import QAction, QIcon
from PySide6.QtWidgets import QLabel, QMainWindow, QMessageBox, QStackedWidget

from app.audio_output import AudioOutput
from app.export import Exporter
from app.library import LibraryEntry
from app.mixer import Mixer
from app.peaks import PeakBuilder, Peaks, load_all, save_all
from app.queue import QueueItem, SeparationQueue, State, format_eta
from app.settings import Settings
from app.sidebar import LibraryView, QueueView
from app.songstate import SongMixKeeper
from app.timeline import format_time
from app.track import TrackAudio
from app.trackview import DropHint, TrackView

if TYPE_CHECKING:
    _Window = QMainWindow
else:
    _Window = object


class SongTransport(_Window):
    """The song shown and the transport: a mixin of `MainWindow`, which supplies the
    attributes declared here. NB: GUI thread only."""

    settings: Settings
    mixer: Mixer
    output: AudioOutput
    exporter: Exporter
    queue: SeparationQueue
    track: TrackAudio | None
    shown_item: QueueItem | None
    shown_entry: LibraryEntry | None
    builder: PeakBuilder | None
    track_view: TrackView
    queue_view: QueueView
    library_view: LibraryView
    mix_keeper: SongMixKeeper
    stack: QStackedWidget
    drop_hint: DropHint
    time_label: QLabel
    output_label: QLabel
    play_action: QAction
    export_action: QAction
    reveal_action: QAction
    play_icon: QIcon
    pause_icon: QIcon

    if TYPE_CHECKING:
        def refresh_library(self) -> None: ...

    # --- the queue's news ----------------------------------------------------------------------

    def _on_track_started(self, item: QueueItem) -> None:
        """A separation has stems growing: show it unless the person is busy with another."""
        busy = self.track is not None and (self.mixer.playing or self.shown_entry is not None
                                           or (self.shown_item is not None
                                               and self.shown_item.state == State.SEPARATING))
        if not busy:
            self.show_item(item)

    def _on_item_finished(self, item: QueueItem) -> None:
        self.refresh_library()
        if self.shown_item is item:
            self.shown_entry = item.entry
            self._update_transport()
        self.statusBar().showMessage(f"{item.path.name}: separated.", 5000)

    def _on_item_changed(self, item: QueueItem) -> None:
        if item is self.shown_item:
            self.track_view.set_info(self._info_text())
        if item is self.shown_item and item.state in (State.FAILED, State.CANCELLED):
            self.show_track(None)
            if item.state == State.FAILED:
                self.statusBar().showMessage(f"{item.path.name}: {item.message}", 10000)

    def _on_item_removed(self, item: QueueItem) -> None:
        if item is self.shown_item and item.state != State.DONE:
            self.show_track(None)

    # --- showing a song ------------------------------------------------------------------------

    def show_item(self, item: QueueItem) -> None:
        """Show a queue item's stems (growing or done); the highlight stays on the song
        shown when there is nothing to show yet (queued, failed)."""
        if item is self.shown_item and self.track is not None:
            self.queue_view.select(item)
            return
        try:
            track = self.queue.track_for(item)
        except (OSError, ValueError) as err:
            self.statusBar().showMessage(f"{item.path.name} cannot be shown ({err}).", 8000)
            track = None
        if track is not None:
            entry = item.entry if item.state == State.DONE else None
            self.show_track(track, item=item, entry=entry)
        else:
            self.queue_view.select(self.shown_item if self.track is not None else None)

    def show_entry(self, entry: LibraryEntry) -> None:
        if entry is self.shown_entry or (self.shown_entry is not None
                                         and self.shown_entry.folder == entry.folder):
            return
        try:
            track = entry.open_track()
        except (OSError, ValueError, KeyError) as err:
            QMessageBox.warning(self, "Demixer", f"“{entry.title}” cannot be opened: its stems "
                                f"in {entry.folder} are missing or damaged ({err}).")
            return
        self.show_track(track, entry=entry)

    def show_track(self, track: TrackAudio | None, item: QueueItem | None = None,
                   entry: LibraryEntry | None = None) -> None:
        self._unload()
        self.track, self.shown_item, self.shown_entry = track, item, entry
        self.setWindowTitle(f"{track.title} — Demixer" if track is not None else "Demixer")
        self.queue_view.select(item if track is not None else None)
        self.library_view.select(entry if track is not None and item is None else None)
        if track is None:
            self.track_view.set_track(None)
            self.stack.setCurrentWidget(self.drop_hint)
            self.time_label.setText("0:00.0 / 0:00.0")
            self._update_transport()
            return
        saved = load_all(entry.peaks_path, len(track.lanes), track.frames) if entry else None
        folder = (entry or (item.entry if item else None))
        self.builder = PeakBuilder(track, saved, on_complete=self._peaks_saver(folder))
        self.builder.start()
        self.track_view.set_track(track, self.builder.peaks, self._info_text())
        self.stack.setCurrentWidget(self.track_view)
        self.mixer.load(track, list(self.track_view.gains()))
        entries = [e for e in (entry, item.entry if item else None) if e is not None]
        self.mix_keeper.opened(track, list({id(e): e for e in entries}.values()))
        self._update_transport()
        self._tick()

    def _peaks_saver(self, entry: LibraryEntry | None):  # type: ignore[no-untyped-def]
        def save(peaks: list[Peaks]) -> None:  # on the builder's thread
            if entry is not None and entry.folder.is_dir():
                try:
                    save_all(peaks, entry.peaks_path)
                except OSError:
                    pass  # only a cache: rebuilt on the next open
        return save

    def _unload(self) -> None:
        self.mix_keeper.closed()  # keeps the song's mix in its library entry
        track, builder = self.track, self.builder
        self.track, self.builder = None, None
        if builder is not None:
            builder.stop()
        if track is not None:
            self.mixer.release(track)
            track.close()

    def _info_text(self) -> str:
        track, item = self.track, self.shown_item
        if track is None:
            return ""
        model = (self.shown_entry.model if self.shown_entry else item.key.name if item else "")
        parts = [model, format_time(track.frames / track.samplerate, tenths=False),
                 f"{track.source_rate / 1000:g} kHz"]
        if item is not None and item.state == State.SEPARATING:
            eta = f", {format_eta(item.eta_s)} left" if item.eta_s is not None else ""
            parts.append(f"separating {item.fraction:.0%}{eta}")
        return " · ".join(p for p in parts if p)

    # --- playback --------------------------------------------------------------------------------

    def toggle_play(self) -> None:
        if self.mixer.playing:
            self.mixer.pause()
        else:
            self.play()
        self._update_transport()

    def play(self) -> None:
        track = self.track
        if track is None or not track.final:
            return
        if self.mixer.position >= track.frames:
            self.mixer.seek(0)
        if not self.output.is_open or self.output.samplerate != track.samplerate:
            reason = self.output.open(track.samplerate, self.settings.audio_device)
            self.output_label.setText("Silent playback" if reason else "")
            if reason:
                self.statusBar().showMessage(reason, 10000)
        self.mixer.play()

    def seek(self, frame: int) -> None:
        """Move the playhead; while the song separates, the separator goes there first
        (playback waits there until it is separated)."""
        if self.track is None:
            return
        went = self.mixer.seek(frame)
        item = self.shown_item
        if item is not None and not self.track.complete:
            self.queue.focus(item, went)
            if not self.track.final.contains(went):
                self.statusBar().showMessage(
                    f"Separating from {format_time(went / self.track.samplerate)} first.",
                    3000)
        self.track_view.timeline.set_playhead(went)

    def seek_by(self, seconds: float) -> None:
        if self.track is not None:
            self.seek(self.mixer.position + int(seconds * self.track.samplerate))

    def _update_transport(self) -> None:
        track = self.track
        self.play_action.setText("Pause" if self.mixer.playing else "Play")
        self.play_action.setIcon(self.pause_icon if self.mixer.playing else self.play_icon)
        self.play_action.setEnabled(track is not None and bool(track.final))
        complete = track is not None and track.complete and not self.exporter.busy
        self.export_action.setEnabled(complete and self._export_entry() is not None)
        self.reveal_action.setEnabled(self._export_entry() is not None)

    def _tick(self) -> None:
        """~30 Hz: playhead, time, device health, peaks and the ready mark."""
        track = self.track
        if track is None:
            return
        position = self.mixer.position
        if self.mixer.playing and position >= track.frames:
            self.mixer.pause()
        lost = self.output.check()
        if lost:
            self.mixer.pause()
            self.statusBar().showMessage(lost, 10000)
        self.track_view.timeline.set_playhead(position, follow=self.mixer.playing)
        rate = track.samplerate
        waiting = " · waiting for separation" if self.mixer.waiting else ""
        self.time_label.setText(f"{format_time(position / rate)} / "
                                f"{format_time(track.frames / rate)}{waiting}")
        self.track_view.poll()
        if self.play_action.text() != ("Pause" if self.mixer.playing else "Play") or (
                self.play_action.isEnabled() != bool(track.final)):
            self._update_transport()

    def _export_entry(self) -> LibraryEntry | None:
        entry = self.shown_entry
        if entry is None and self.shown_item is not None and self.shown_item.state == State.DONE:
            entry = self.shown_item.entry
        return entry if entry is not None and entry.complete else None
