"""The separation queue: files wait, then run one at a time as engine jobs in the worker.

Each `QueueItem` goes queued -> preparing (model) -> separating (decode, then chunks) ->
done | failed (with the engine's sentence) | cancelled; failed and cancelled items can be
retried. Jobs run in the worker process (`app.worker`, through `app.service.SeparationService`);
their events come back as Qt signals on the GUI thread. The stems are written straight into
the song's library folder (`app.library`), and kept there when the separation finishes.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from app.library import Library, LibraryEntry, resumable_fraction
from app.protocol import ModelKey, StemsInfo
from app.service import LiveProgress, SeparationService, needs_setup
from app.track import TrackAudio, make_lanes
from engine.decode import find_audio_files
from engine.job import JobEvent
from engine.stembuffers import StemBuffers


class State(Enum):
    QUEUED = "queued"
    PREPARING = "preparing model"
    SEPARATING = "separating"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # a quit, crash or power loss stopped it: it can resume


ACTIVE = (State.PREPARING, State.SEPARATING)
_ids = itertools.count(1)


@dataclass(eq=False)
class QueueItem:
    path: Path
    key: ModelKey
    two_stems: bool
    state: State = State.QUEUED
    stage: str = ""  # "decoding" | "separating" while SEPARATING
    fraction: float = 0.0
    eta_s: float | None = None
    message: str = ""
    entry: LibraryEntry | None = None
    live: LiveProgress | None = None  # the ready mark while separating
    info: StemsInfo | None = None  # the stems' shape, once decoded (the worker's TrackNews)
    cancelling: bool = False
    started: float = 0.0  # time.monotonic() when its job started
    seconds: float = 0.0  # how long the separation took
    resume: bool = False  # continue the entry's checkpointed stems instead of starting over
    resumed_at: float = 0.0  # the fraction a resumed run started from
    id: int = field(default_factory=lambda: next(_ids))

    def status_text(self) -> str:
        if self.state == State.SEPARATING and self.cancelling:
            return "Cancelling…"
        if self.state == State.SEPARATING:
            if self.stage == "decoding":
                return f"Reading file {self.fraction:.0%}"
            eta = "" if self.eta_s is None else f" · {format_eta(self.eta_s)} left"
            return f"Separating {self.fraction:.0%}{eta}"
        if self.state == State.FAILED:
            return f"Failed: {self.message}"
        if self.state == State.PREPARING:
            return self.message or "Preparing model…"
        if self.state == State.DONE and self.seconds:
            return f"Done in {format_eta(self.seconds)}"
        if self.state == State.INTERRUPTED:
            return f"Interrupted at {self.fraction:.0%}"
        if self.state == State.CANCELLED and self.resume:
            return f"Cancelled at {self.fraction:.0%}"
        return self.state.value.capitalize()


def format_eta(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


class SeparationQueue(QObject):
    added = Signal(object)  # QueueItem
    changed = Signal(object)
    removed = Signal(object)
    trackStarted = Signal(object)  # stems exist and grow: the item can be shown
    finished = Signal(object)  # done (its library entry is complete)
    modelNeeded = Signal(object)  # ModelKey to download first (the first-run dialog)
    notice = Signal(object, str)  # QueueItem, a sentence to show once (a backend handed over)

    def __init__(self, library: Library, service: SeparationService,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.library = library
        self.service = service
        self.items: list[QueueItem] = []
        self.current: QueueItem | None = None
        self._dialog_keys: set[ModelKey] = set()  # models the first-run dialog answers for
        service.jobTrack.connect(self._on_track_info)
        service.jobEvent.connect(self._on_service_event)
        service.died.connect(self._on_worker_died)
        service.loaded.connect(self._on_model_loaded)
        service.failed.connect(self._on_loader_failed)
        service.cancelled.connect(lambda key: self._on_loader_failed(
            key, f"Model {key.name} is not ready: its download, conversion or calibration was "
                 f"cancelled."))

    # --- the GUI's actions -----------------------------------------------------------------

    def add(self, paths: Iterable[str | Path], key: ModelKey, two_stems: bool) -> list[QueueItem]:
        """Queue files (folders are walked); paths are made absolute, as the library keeps
        them (a relative one from the command line would not match the song later)."""
        items = [QueueItem(path=Path(os.path.abspath(p)), key=key, two_stems=two_stems)
                 for p in find_audio_files(paths)]
        for item in items:
            self.items.append(item)
            self.added.emit(item)
        self._start_next()
        return items

    def cancel(self, item: QueueItem) -> None:
        if item.state == State.QUEUED:
            self._set(item, State.CANCELLED)
        elif item.state == State.PREPARING:
            self._set(item, State.CANCELLED)
            self.current = None
            self._start_next()
        elif item.state == State.SEPARATING and not item.cancelling:
            item.cancelling = True
            self.service.cancel_job(item.id)  # the job's "cancelled" event finishes the item

    def focus(self, item: QueueItem, frame: int) -> None:
        """The listener sought to `frame` of `item`: if it is separating, the separator works
        there first (then on from there, the skipped part last)."""
        if item.state == State.SEPARATING and not item.cancelling:
            self.service.focus_job(item.id, frame)

    def retry(self, item: QueueItem) -> None:
        """Run a failed or cancelled item again: from its checkpoint if it left one."""
        if item.state in (State.FAILED, State.CANCELLED):
            if not item.resume:
                item.fraction = 0.0
            item.eta_s, item.message, item.stage = None, "", ""
            item.cancelling, item.info, item.live = False, None, None
            self._set(item, State.QUEUED)
            self._start_next()

    def add_interrupted(self, entries: Iterable[LibraryEntry]) -> list[QueueItem]:
        """List separations a quit or crash stopped (from `Library.tidy`), to resume."""
        items = []
        for entry in entries:
            key = ModelKey(entry.model, entry.backend, entry.compute_units, entry.shifts,
                           entry.segment)
            item = QueueItem(path=Path(entry.source), key=key, two_stems=entry.two_stems,
                             state=State.INTERRUPTED, entry=entry, resume=True,
                             fraction=resumable_fraction(entry.stems_dir) or 0.0)
            items.append(item)
            self.items.append(item)
            self.added.emit(item)
        return items

    def resume(self, item: QueueItem) -> None:
        """Continue an interrupted separation from its last checkpoint."""
        if item.state == State.INTERRUPTED:
            self._set(item, State.QUEUED)
            self._start_next()

    def remove(self, item: QueueItem) -> None:
        """Take `item` off the queue; unfinished stems it kept for a resume go too."""
        if item.state in ACTIVE:
            self.cancel(item)
        if item.state != State.DONE and item.state not in ACTIVE and item.entry is not None:
            self.library.delete(item.entry)
            item.entry = None
        if item in self.items:
            self.items.remove(item)
            self.removed.emit(item)

    def cancel_all(self) -> None:
        for item in list(self.items):
            if item.state in (State.QUEUED, *ACTIVE):
                self.cancel(item)

    def model_declined(self, key: ModelKey, reason: str) -> None:
        """The first-run dialog was closed without the model: fail what waits for it."""
        self._dialog_keys.discard(key)
        self._on_model_failed(key, reason)

    def dialog_opened(self, key: ModelKey) -> None:
        """The first-run dialog now answers for `key` (its failures offer a retry there)."""
        self._dialog_keys.add(key)

    def _on_loader_failed(self, key: ModelKey, reason: str) -> None:
        if key not in self._dialog_keys:  # else the dialog shows it and offers a retry
            self._on_model_failed(key, reason)

    # --- running ---------------------------------------------------------------------------

    def _set(self, item: QueueItem, state: State, message: str | None = None) -> None:
        item.state = state
        if message is not None:
            item.message = message
        self.changed.emit(item)

    def _start_next(self) -> None:
        if self.current is not None:
            return
        item = next((i for i in self.items if i.state == State.QUEUED), None)
        if item is None:
            return
        self.current = item
        self._set(item, State.PREPARING, "Preparing model…")
        if self.service.is_loaded(item.key):
            self._start_job(item)
        elif needs_setup(item.key.name):
            self._set(item, State.PREPARING, "Waiting for the model download…")
            self._dialog_keys.add(item.key)
            self.modelNeeded.emit(item.key)
        else:
            self.service.load(item.key)

    def _on_model_loaded(self, key: ModelKey) -> None:
        self._dialog_keys.discard(key)
        item = self.current
        if item is not None and item.state == State.PREPARING and item.key == key:
            self._start_job(item)

    def _on_model_failed(self, key: ModelKey, reason: str) -> None:
        item = self.current
        if item is None or item.state != State.PREPARING or item.key != key:
            return
        for waiting in self.items:  # the others need the same model: same answer
            if waiting.key == key and waiting.state in (State.QUEUED, State.PREPARING):
                self._set(waiting, State.FAILED, reason)
        self.current = None
        self._start_next()

    def _start_job(self, item: QueueItem) -> None:
        if item.resume and item.entry is not None:
            self._resume_job(item, item.entry)
            return
        k = item.key
        try:
            entry = self.library.create(item.path, k.name, item.two_stems, backend=k.backend,
                                        compute_units=k.compute_units, shifts=k.shifts,
                                        segment=k.segment)
        except OSError as err:
            self._finish(item, State.FAILED, f"The library folder {self.library.root} cannot "
                                             f"be written ({err.strerror or err}).")
            return
        item.entry = entry
        item.started, item.resumed_at = time.monotonic(), 0.0
        self._set(item, State.SEPARATING, "")
        item.live = self.service.separate(item.id, item.path, item.key, entry.stems_dir,
                                         entry.mix_dir)

    def _resume_job(self, item: QueueItem, entry: LibraryEntry) -> None:
        try:
            self.library.lock(entry)
        except OSError:
            self._finish(item, State.FAILED, f"{entry.folder} is in use by another Demixer.",
                         discard=False)
            return
        item.started, item.resumed_at = time.monotonic(), 0.0
        self._set(item, State.SEPARATING, "")
        item.live = self.service.separate(item.id, item.path, item.key, entry.stems_dir,
                                         entry.mix_dir, resume=True)

    @property
    def busy(self) -> bool:
        """Whether a separation runs or waits (quitting now would stop it)."""
        return any(i.state in (State.QUEUED, *ACTIVE) for i in self.items)

    def _item(self, job_id: int) -> QueueItem | None:
        return next((i for i in self.items if i.id == job_id), None)

    def _on_track_info(self, job_id: int, info: StemsInfo) -> None:
        item = self._item(job_id)
        if item is None or item.entry is None:
            return
        item.info = info
        entry = item.entry
        entry.sources = list(info.sources)
        entry.frames, entry.samplerate = info.frames, info.samplerate
        entry.source_rate, entry.source_frames = info.source_rate, info.source_frames

    def _on_service_event(self, job_id: int, event: JobEvent) -> None:
        item = self._item(job_id)
        if item is not None:
            self._on_job_event(item, event)

    def _on_worker_died(self, exitcode: object) -> None:
        item = self.current
        if item is not None and item.state in ACTIVE:
            self._finish(item, State.FAILED, f"The separation process stopped unexpectedly "
                                             f"(exit code {exitcode}); retry to run it again.")

    def _on_job_event(self, item: QueueItem, event: JobEvent) -> None:
        if item.state != State.SEPARATING:
            return
        if event.kind in ("stage", "progress"):
            item.stage = event.stage or item.stage
            item.fraction = event.fraction if event.kind == "progress" else (
                item.resumed_at if event.stage == "separating" else 0.0)
            item.eta_s = event.eta_s
            self.changed.emit(item)
            if event.kind == "stage" and event.stage == "separating":
                self.trackStarted.emit(item)
        elif event.kind == "resumed":
            item.fraction = item.resumed_at = event.fraction
            self.changed.emit(item)
        elif event.kind == "notice":
            self.notice.emit(item, event.message)
        elif event.kind == "done":
            self._complete(item)
        elif event.kind == "failed":
            self._finish(item, State.FAILED, event.message, discard=not self._keeps(item))
        elif event.kind == "cancelled":
            self._finish(item, State.CANCELLED, "", discard=not self._keeps(item))
        if event.kind in ("done", "failed", "cancelled"):
            item.live = None

    def _keeps(self, item: QueueItem) -> bool:
        """After a cancel or failure: whether the job left a checkpoint to resume (then
        Retry resumes it; removing the item or quitting discards it)."""
        fraction = resumable_fraction(item.entry.stems_dir) if item.entry else None
        if fraction is None:
            return False
        item.fraction = fraction
        return True

    def _complete(self, item: QueueItem) -> None:
        entry = item.entry
        assert entry is not None
        entry.complete = True
        try:
            entry.save()
            self.library.replace_older(entry)
        except OSError as err:
            self._finish(item, State.FAILED, f"The library entry {entry.folder} cannot be "
                                             f"written ({err.strerror or err}).")
            return
        item.fraction = 1.0
        item.seconds = time.monotonic() - item.started
        self._finish(item, State.DONE, "")
        self.finished.emit(item)

    def _finish(self, item: QueueItem, state: State, message: str,
                discard: bool = True) -> None:
        """End `item`'s run; unless DONE, its library folder goes too, or (not `discard`)
        stays for a resume."""
        if item.entry is not None:
            self.library.release(item.entry)
        if state != State.DONE and item.entry is not None and discard:
            self.library.delete(item.entry)
            item.entry = None
        item.resume = state != State.DONE and item.entry is not None
        self._set(item, state, message)
        if self.current is item:
            self.current = None
        self._start_next()

    def track_for(self, item: QueueItem) -> TrackAudio | None:
        """A TrackAudio over `item`'s stems (growing if it still separates), or None."""
        entry, info = item.entry, item.info
        if entry is None:
            return None
        if item.state == State.DONE:
            return entry.open_track()
        if info is None or item.live is None:
            return None
        stems = StemBuffers(entry.stems_dir, info.sources, info.channels, info.frames,
                            info.samplerate, create=False)
        mix = StemBuffers.open(entry.mix_dir)
        return TrackAudio(entry.title, stems, mix, make_lanes(info.sources, item.two_stems),
                          progress=item.live, source_rate=entry.source_rate,
                          source_frames=entry.source_frames)

    def suspend(self) -> None:
        """At quit: a running separation becomes interrupted, its stems stay on disk to
        resume at the next start (the worker is stopped separately, then `release_all`), as
        do those a failure left resumable; what the person cancelled goes."""
        for item in self.items:
            if item.state in ACTIVE:
                self._set(item, State.INTERRUPTED if item.entry is not None else State.QUEUED)
            elif item.state == State.CANCELLED and item.entry is not None:
                self.library.delete(item.entry)
                item.entry = None
        self.current = None

    def release_all(self) -> None:
        """After the worker has stopped: let other processes tidy these folders."""
        for item in self.items:
            if item.entry is not None:
                self.library.release(item.entry)
