"""Models and separations as the GUI sees them: `SeparationService` drives the worker
process (`app.worker`) and turns its messages into Qt signals, queued to the GUI thread."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from app.worker import Message, WorkerClient
from engine.errors import DemixerError
from engine.intervals import Intervals
from engine.separator import SeparationOptions, Separator
from engine.store import ENV_MODEL_REPO, model_status


@dataclass(frozen=True)
class ModelKey:
    name: str
    backend: str = "auto"
    compute_units: str = "all"
    shifts: int = 1
    segment: float | None = None
    quality: str = "default"  # the calibration gate `backend="auto"` runs at

    def options(self) -> SeparationOptions:
        return SeparationOptions(shifts=self.shifts, segment=self.segment)


def needs_setup(name: str) -> bool:
    """Whether loading `name` would download: no local repo set and checkpoints missing."""
    if os.environ.get(ENV_MODEL_REPO):
        return False
    try:
        return not model_status(name).complete
    except DemixerError:
        return False  # an unknown name: let the load report it


def build(key: ModelKey, progress: Any = None, cancel: Any = None,
          convert_progress: Any = None, calibrate_progress: Any = None) -> Separator:
    """The engine's separator for `key` (in the worker process): download progress goes to
    `progress`, the first CoreML run's conversion stages to `convert_progress`, and the
    first run's calibration (`backend="auto"`) to `calibrate_progress`."""
    from engine.pipeline import build_separator

    units = key.compute_units if key.backend == "coreml" else None  # auto: calibrated
    return build_separator(key.name, backend=key.backend, options=key.options(),
                           progress=progress, cancel=cancel, compute_units=units,
                           convert_progress=convert_progress, quality=key.quality,
                           calibrate_progress=calibrate_progress)


class LiveProgress:
    """Where a running separation's stems are final: `final` (an immutable `Intervals`, out
    of order after a seek) and its prefix `ready_frames`. NB: both are replaced by single
    stores on the reader thread as messages arrive (`final` first); the feeder, peaks and GUI
    threads read them."""

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
    jobTrack = Signal(int, object)  # job id, stems info (frames, rates, sources)
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

    def get(self, key: ModelKey) -> bool:
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
        self.client.send(("prepare", key))

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
        self.client.send(("calibrate", key))

    # --- jobs ----------------------------------------------------------------------------

    def separate(self, job_id: int, path: Path, key: ModelKey, stems_dir: Path,
                 mix_dir: Path, resume: bool = False) -> LiveProgress:
        """Start a job; `resume` continues the checkpointed stems in `stems_dir`."""
        live = LiveProgress()
        with self._lock:
            self._live[job_id] = live
        self.client.send(("separate", job_id, str(path), key, str(stems_dir), str(mix_dir),
                          resume))
        self._loaded = key  # the worker loads it for the job if it had another
        return live

    def cancel_job(self, job_id: int) -> None:
        self.client.send(("cancel", job_id))

    def focus_job(self, job_id: int, frame: int) -> None:
        """Ask the running job to separate around `frame` first (the listener sought there)."""
        if self.client.alive:
            self.client.send(("focus", job_id, int(frame)))

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker (its job keeps its finished chunks); after `timeout` seconds it
        is terminated (the last checkpoint on disk still holds)."""
        self.client.close(timeout)

    # --- messages ------------------------------------------------------------------------

    def _from_reader(self, message: Message) -> None:
        """On the reader thread: raise the ready mark at once, then queue to the GUI."""
        if message[0] == "event" and message[2].kind in ("ready", "resumed"):
            with self._lock:
                live = self._live.get(message[1])
            if live is not None:
                live.grow(message[2].final, message[2].ready_frames)
        self._message.emit(message)

    def _dispatch(self, message: Message) -> None:
        kind = message[0]
        if kind == "model":
            self._model_message(*message[1:])
        elif kind == "track":
            self.jobTrack.emit(message[1], message[2])
        elif kind == "event":
            if message[2].kind in ("done", "failed", "cancelled"):
                with self._lock:
                    self._live.pop(message[1], None)
            self.jobEvent.emit(message[1], message[2])
        elif kind == "died":
            self._loaded = self._busy = None
            if self.recalibrating is not None:
                self.calibrationFailed.emit(self.recalibrating, "The separation process "
                                            "stopped unexpectedly; try again.")
                self.recalibrating = None
            self.died.emit(message[1])

    def _model_message(self, kind: str, key: ModelKey, payload: Any) -> None:
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
