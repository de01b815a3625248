"""The messages between the GUI process and the separation worker process (`app.worker`),
and what they carry: `ModelKey` (which model, how) and `StemsInfo` (a job's stems). Qt-free:
the worker imports this and never loads Qt.

Every message is a frozen dataclass sent whole over one duplex `multiprocessing` pipe
(pickled; every field is picklable):
  parent -> child: `Prepare` | `Separate` | `Calibrate` | `Cancel` | `Quit`
                   (a cancel or quit keeps the job's finished chunks) | `Focus` (the
                   listener sought: separate around there first)
  child -> parent: `ModelNews`  a model's loading: progress|convert|calibrate|loaded|failed|
                                cancelled, and a calibration's calibrated|calibration-failed
                   `TrackNews`  a job's stems exist (after decoding): their shape
                   `JobNews`    a job's `engine.job.JobEvent`, as the job sends it
  reader -> GUI:   `WorkerDied` the child is gone (made by the parent's reader thread)
A model download, conversion or calibration is cancelled through a shared Event instead (the
child is busy inside it then). The threads on both sides: docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from engine.job import JobEvent
from engine.separator import SeparationOptions

if TYPE_CHECKING:
    from engine.separator import Separator


@dataclass(frozen=True)
class ModelKey:
    """A model and the settings it is built with: the worker keeps one built at a time."""

    name: str
    backend: str = "auto"
    compute_units: str = "all"
    shifts: int = 1
    segment: float | None = None
    quality: str = "default"  # the calibration gate `backend="auto"` runs at

    def options(self) -> SeparationOptions:
        return SeparationOptions(shifts=self.shifts, segment=self.segment)


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


@dataclass(frozen=True)
class StemsInfo:
    """A job's stems once decoded: what the GUI needs to open them while they grow."""

    frames: int  # at the model's rate
    samplerate: int  # the model's
    source_rate: int  # the song's own
    source_frames: int
    sources: tuple[str, ...]
    channels: int


# --- parent -> child ---------------------------------------------------------------------


@dataclass(frozen=True)
class Prepare:
    """Load (downloading, converting, calibrating as needed) `key`'s model."""

    key: ModelKey


@dataclass(frozen=True)
class Separate:
    """Run a job; `resume` continues the checkpointed stems in `stems_dir`."""

    job_id: int
    path: str
    key: ModelKey
    stems_dir: str
    mix_dir: str
    resume: bool = False


@dataclass(frozen=True)
class Calibrate:
    """Calibrate `key`'s model afresh (Preferences asked)."""

    key: ModelKey


@dataclass(frozen=True)
class Cancel:
    job_id: int


@dataclass(frozen=True)
class Quit:
    pass


@dataclass(frozen=True)
class Focus:
    """The listener sought to `frame` (model rate) of job `job_id`'s song."""

    job_id: int
    frame: int


Request = Prepare | Separate | Calibrate | Cancel | Quit | Focus


# --- child -> parent ---------------------------------------------------------------------

ModelKind = Literal["progress", "convert", "calibrate", "loaded", "failed", "cancelled",
                    "calibrated", "calibration-failed"]


@dataclass(frozen=True)
class ModelNews:
    """`payload`: a DownloadProgress (progress), ConvertProgress (convert),
    CalibrationProgress (calibrate), a Calibration (calibrated), one sentence (failed,
    calibration-failed: "" if cancelled), else None."""

    kind: ModelKind
    key: ModelKey
    payload: Any = None


@dataclass(frozen=True)
class TrackNews:
    job_id: int
    info: StemsInfo


@dataclass(frozen=True)
class JobNews:
    job_id: int
    event: JobEvent


@dataclass(frozen=True)
class WorkerDied:
    exitcode: int | None


News = ModelNews | TrackNews | JobNews | WorkerDied
