"""The separation service as the GUI sees it: `SeparationService` drives the worker process
(`app.worker`, messages in `app.protocol`) and turns its news into Qt signals, queued to the
GUI thread; `LiveProgress` is a running job's ready mark (its hand-overs: docs/architecture.md).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from app.protocol import (
    Calibrate,
    Cancel,
    Focus,
    JobNews,
    ModelKey,
    ModelNews,
    News,
    Prepare,
    Separate,
    TrackNews,
    WorkerDied,
)
from app.worker import WorkerClient
from engine.errors import DemixerError
from engine.intervals import Intervals
from engine.store import ENV_MODEL_REPO, model_status


def needs_setup(name: str) -> bool:
    """Whether loading `name` would download: no local repo set and checkpoints missing."""
    if os.environ.get(ENV_MODEL_REPO):
        return False
    try:
        return not model_status(name).complete
    except DemixerError:
        return False  # an unknown name: let the load report it


class LiveProgress:
    """Where a running separation's stems are final: `final` (an immutable `Intervals`, out
    of order after a seek) and its prefix `ready_frames`. NB: both are replaced by single
    stores on the reader thread as messages arrive (`final` first); the feeder, peaks and GUI
    threads read them (the hand-overs and why they are safe: docs/architecture.md, "The
    ready mark")."""

    def __init__(self) -> None:
        self.final = Intervals()
        self.ready_frames = 0

    def grow(self, spans: Iterable[tuple[int, int]], ready_frames: int) -> None:
        """Take an event's final intervals (they only ever grow)."""
        self.final = self.final.union(Intervals(spans).add(0, ready_frames))
        self.ready_frames = max(self.ready_frames, ready_frames, self.final.prefix)


class SeparationService(QObject):
    # model loading (the first-run dialog and the queue)
    progress = Signal(object, object)  # ModelKey, engine.download.DownloadProgress
    converting = Signal(object, object)  # ModelKey, engine.coreml.convert.ConvertProgress
    calibrating = Signal(object, object)  # ModelKey, engine.calibrate.CalibrationProgress
    # a calibration asked for (Preferences' "Calibrate Again")
    calibrated = Signal(object, object)  # ModelKey, engine.calibrate.Calibration
    calibrationFailed = Signal(object, str)  # ModelKey, one sentence ("" if cancelled)
    loaded = Signal(object)  # ModelKey
    failed = Signal(object, str)  # ModelKey, one sentence
    cancelled = Signal(object)  # ModelKey
    # jobs
    jobTrack = Signal(int, object)  # job id, app.protocol.StemsInfo
    jobEvent = Signal(int, object)  # job id, engine.job.JobEvent
    died = Signal(object)  # the worker's exit code
    _message = Signal(object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.client = WorkerClient(self._from_reader)
        self._loaded: ModelKey | None = None  # what the worker holds in memory
        self._busy: ModelKey | None = None
        self.recalibrating: ModelKey | None = None  # a calibration asked for, running
        self._live: dict[int, LiveProgress] = {}
        self._lock = threading.Lock()  # guards _live between the GUI and the reader thread
        self._message.connect(self._dispatch)

    # --- models ------------------------------------------------------------------------

    def is_loaded(self, key: ModelKey) -> bool:
        """Whether the worker has `key` loaded (a separation can start at once)."""
        return self._loaded == key

    @property
    def busy(self) -> ModelKey | None:
        return self._busy

    def load(self, key: ModelKey) -> None:
        """Load (downloading if needed) `key` in the worker; signals report the outcome."""
        if self._busy == key:
            return
        self._busy = key
        self.client.send(Prepare(key))

    def cancel(self) -> None:
        """Cancel a model download, conversion or calibration in progress."""
        self.client.cancel_model.set()

    def recalibrate(self, key: ModelKey) -> None:
        """Calibrate `key`'s model afresh in the worker (never here: it is heavy); the
        `calibrating` signals report it, then `calibrated` or `calibrationFailed`."""
        if self.recalibrating is not None:
            return
        self.recalibrating = key
        self._loaded = None  # the worker drops its separator: the next job uses the result
        self.client.send(Calibrate(key))

    # --- jobs ----------------------------------------------------------------------------

    def separate(self, job_id: int, path: Path, key: ModelKey, stems_dir: Path,
                 mix_dir: Path, resume: bool = False) -> LiveProgress:
        """Start a job; `resume` continues the checkpointed stems in `stems_dir`."""
        live = LiveProgress()
        with self._lock:
            self._live[job_id] = live
        self.client.send(Separate(job_id, str(path), key, str(stems_dir), str(mix_dir), resume))
        self._loaded = key  # the worker loads it for the job if it had another
        return live

    def cancel_job(self, job_id: int) -> None:
        self.client.send(Cancel(job_id))

    def focus_job(self, job_id: int, frame: int) -> None:
        """Ask the running job to separate around `frame` first (the listener sought there)."""
        if self.client.alive:
            self.client.send(Focus(job_id, int(frame)))

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker (its job keeps its finished chunks); after `timeout` seconds it
        is terminated (the last checkpoint on disk still holds)."""
        self.client.close(timeout)

    # --- messages ------------------------------------------------------------------------

    def _from_reader(self, news: News) -> None:
        """On the reader thread: raise the ready mark at once, then queue to the GUI."""
        if isinstance(news, JobNews) and news.event.kind in ("ready", "resumed"):
            with self._lock:
                live = self._live.get(news.job_id)
            if live is not None:
                live.grow(news.event.final, news.event.ready_frames)
        self._message.emit(news)

    def _dispatch(self, news: News) -> None:
        if isinstance(news, ModelNews):
            self._model_message(news)
        elif isinstance(news, TrackNews):
            self.jobTrack.emit(news.job_id, news.info)
        elif isinstance(news, JobNews):
            if news.event.kind in ("done", "failed", "cancelled"):
                with self._lock:
                    self._live.pop(news.job_id, None)
            self.jobEvent.emit(news.job_id, news.event)
        elif isinstance(news, WorkerDied):
            self._loaded = self._busy = None
            if self.recalibrating is not None:
                self.calibrationFailed.emit(self.recalibrating, "The separation process "
                                            "stopped unexpectedly; try again.")
                self.recalibrating = None
            self.died.emit(news.exitcode)

    def _model_message(self, news: ModelNews) -> None:
        kind, key, payload = news.kind, news.key, news.payload
        if kind in ("progress", "convert", "calibrate"):
            {"progress": self.progress, "convert": self.converting,
             "calibrate": self.calibrating}[kind].emit(key, payload)
            return
        if kind in ("calibrated", "calibration-failed"):
            self.recalibrating = None
            if kind == "calibrated":
                self.calibrated.emit(key, payload)
            else:
                self.calibrationFailed.emit(key, str(payload or ""))
            return
        if self._busy == key:
            self._busy = None
        if kind == "loaded":
            self._loaded = key
            self.loaded.emit(key)
        elif kind == "failed":
            self.failed.emit(key, str(payload))
        elif kind == "cancelled":
            self.cancelled.emit(key)
