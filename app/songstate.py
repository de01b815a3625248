"""Keeps the open song's mix (lanes, loop, speed, pitch) in its library entry and restores it
when the song is opened again.

Saved a second after the last change and when the song is closed, by re-reading entry.json
and replacing only `song_mix` (atomically, `LibraryEntry.save`): the queue holds its own
`LibraryEntry` objects for songs still separating and saves them when they finish, so the mix
is also set on those objects, never written from a stale copy over a newer entry.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, QTimer

from app.library import DamagedEntry, LibraryEntry
from app.practicebar import PracticeController
from app.songmix import SongMix
from app.track import TrackAudio
from app.trackview import TrackView

SAVE_DELAY_MS = 1000


def save_song_mix(entries: list[LibraryEntry], mix: SongMix) -> None:
    """Set `mix` on every in-memory copy in `entries` and in the entry.json on disk."""
    info = mix.to_json()
    for entry in entries:
        entry.song_mix = info
    if not entries:
        return
    try:
        on_disk = LibraryEntry.load(entries[0].folder)
    except DamagedEntry:
        return  # gone or damaged: the library's tidy-up deals with it, not the mix
    on_disk.song_mix = info
    try:
        on_disk.save()
    except OSError:
        pass  # a full or read-only disk: the mix is only a convenience


class SongMixKeeper(QObject):
    def __init__(self, view: TrackView, practice: PracticeController,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.view, self.practice = view, practice
        self.entries: list[LibraryEntry] = []
        self.track: TrackAudio | None = None
        self._restoring = False
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(SAVE_DELAY_MS)
        self.timer.timeout.connect(self.save)
        view.gainsChanged.connect(lambda _: self._changed())
        practice.changed.connect(self._changed)

    def opened(self, track: TrackAudio, entries: list[LibraryEntry]) -> None:
        """A song is shown (after `Mixer.load`): apply its kept mix. `entries`: the in-memory
        copies of its library entry (none for a song that has no entry)."""
        self.track, self.entries = track, [e for e in entries if e is not None]
        mix = SongMix.from_json(self.entries[0].song_mix if self.entries else {})
        self._restoring = True
        try:
            self.view.restore_mix(mix)
            self.practice.restore(mix, track.frames)
        finally:
            self._restoring = False

    def closed(self) -> None:
        """The song is going away: keep its mix now."""
        if self.timer.isActive():
            self.timer.stop()
            self.save()
        self.track, self.entries = None, []
        self.practice.set_enabled(False)

    def current(self) -> SongMix:
        loop, rate = self.practice.state()
        return SongMix(lanes=self.view.lane_mix(), loop=loop, rate=rate)

    def shaped(self) -> bool:
        """A lane is muted or soloed otherwise than by default (Export: "the current mix")."""
        return self.track is not None and self.current().shaped(self.track.lanes)

    def save(self) -> None:
        if self.track is not None:
            save_song_mix(self.entries, self.current())

    def _changed(self) -> None:
        if not self._restoring and self.track is not None:
            self.timer.start()
