"""The separation worker process: model loading and `engine.job.SeparationJob`s, off the GUI's
interpreter. Qt-free.

Why a process and not a thread: a thread doing numpy/torch work holds the GIL for much of
the time (the tiny test model is almost all Python overhead), and every Python slot, paint
and audio callback in the GUI process must take the GIL back; on a busy 2-core machine that
stalled the GUI thread for 50-250 ms. In a child process the GUI and the audio callback never
wait for it. The stems still stream: the child writes them into the library folder
(`engine.stembuffers` files, positional writes into the shared page cache) and reports each
new ready mark; the GUI process reads only below that mark, with its own file descriptors.

The messages (frozen dataclasses over one duplex `multiprocessing` pipe) are in
`app.protocol`. A model download, conversion or calibration is cancelled through a shared
Event (the child is busy inside it then). Calibration (`engine.calibrate`) runs here, never
in the GUI process: it runs the network a dozen times and more. The child never loads Qt
(tests/app/test_worker.py checks it). Its threads (main, job, post) and what each owns:
docs/architecture.md. A `Focus` during a job moves its separator to the listener's playhead
(`SeparationJob.focus`); one that comes between jobs is dropped.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from app.protocol import (
    Calibrate,
    Cancel,
    Focus,
    JobNews,
    ModelKey,
    ModelNews,
    News,
    Prepare,
    Quit,
    Request,
    Separate,
    StemsInfo,
    TrackNews,
    WorkerDied,
)

if TYPE_CHECKING:
    from engine.job import JobEvent, SeparationJob
    from engine.separator import Separator

POLL_S = 0.05
WORKER_NICE = 10


def separation_threads() -> int:
    """Torch threads for separating: leave one core to the GUI and the audio callback."""
    return max(1, (os.cpu_count() or 2) - 1)


# --- the child ---------------------------------------------------------------------------


class _Child:
    def __init__(self, conn: Connection, cancel_model: ProcessEvent) -> None:
        self.conn = conn
        self.cancel_model = cancel_model
        self.send_lock = threading.Lock()
        self.cached: tuple[ModelKey, Separator] | None = None
        self.pending: list[Request] = []
        self.quitting = False
        self.parent_gone = False  # the app died (a crash, kill -9): nobody reads any more

    def send(self, message: News) -> None:
        with self.send_lock:  # NB: the job thread and the main thread both send
            if self.parent_gone:
                return
            try:
                self.conn.send(message)
            except OSError:  # e.g. BrokenPipeError: the job must not die of it mid-chunk
                self.parent_gone = True

    def run(self) -> None:
        while not self.quitting:
            message = self.pending.pop(0) if self.pending else self.conn.recv()
            if isinstance(message, Prepare):
                self.prepare(message.key)
            elif isinstance(message, Separate):
                self.separate(message.job_id, message.path, message.key, message.stems_dir,
                              message.mix_dir, message.resume)
            elif isinstance(message, Calibrate):
                self.calibrate(message.key)
            elif isinstance(message, Quit):
                self.quitting = True

    def separator(self, key: ModelKey, report: bool) -> Separator:
        """The separator for `key`, loaded (and downloaded) if it is not the cached one."""
        from app.protocol import build  # looked up now: tests replace it

        if self.cached is not None and self.cached[0] == key:
            return self.cached[1]
        self.cached = None  # one model in memory at a time

        def progress(p: Any) -> None:
            if report:
                self.send(ModelNews("progress", key, p))

        self.cancel_model.clear()
        separator = build(key, progress, self.cancel_model, self._reporter("convert", key),
                          self._reporter("calibrate", key))
        self.cached = (key, separator)
        return separator

    def _reporter(self, kind: Literal["convert", "calibrate"], key: ModelKey
                  ) -> Callable[[Any], None]:
        """Progress of a first run's conversion or calibration: always worth showing."""
        return lambda p: self.send(ModelNews(kind, key, p))

    def calibrate(self, key: ModelKey) -> None:
        """Calibrate `key`'s model afresh (Preferences asked); the next job uses the result."""
        from engine.calibrate import calibrate
        from engine.errors import Cancelled, DemixerError
        from engine.store import load_model, resolve_model

        self.cancel_model.clear()
        cancel = self.cancel_model
        try:
            resolved = resolve_model(key.name, cancel=cancel)
            result = calibrate(load_model(resolved), resolved, cancel=cancel,
                               progress=self._reporter("calibrate", key),
                               convert_progress=self._reporter("convert", key))
        except Cancelled:
            self.send(ModelNews("calibration-failed", key, ""))
        except (DemixerError, OSError, RuntimeError, MemoryError) as err:
            self.send(ModelNews("calibration-failed", key, str(err)))
        else:
            self.cached = None  # built on the old choice
            self.send(ModelNews("calibrated", key, result))

    def prepare(self, key: ModelKey) -> None:
        from engine.errors import Cancelled, DemixerError

        try:
            self.separator(key, report=True)
        except Cancelled:
            self.send(ModelNews("cancelled", key))
        except DemixerError as err:
            self.send(ModelNews("failed", key, str(err)))
        except (OSError, RuntimeError, MemoryError) as err:  # torch or the disk
            self.send(ModelNews("failed", key, f"Model {key.name} cannot be loaded ({err})."))
        except Exception as err:  # a bug or a library's surprise: logged, one line
            from engine.logfile import unexpected_message

            self.send(ModelNews("failed", key, unexpected_message(f"Model {key.name}", err)))
        else:
            self.send(ModelNews("loaded", key))

    def separate(self, job_id: int, path: str, key: ModelKey, stems_dir: str, mix_dir: str,
                 resume: bool = False) -> None:
        from engine.errors import DemixerError
        from engine.job import JobEvent, SeparationJob

        try:
            separator = self.separator(key, report=False)
        except (DemixerError, OSError, RuntimeError, MemoryError) as err:
            self.send(JobNews(job_id, JobEvent("failed", message=str(err))))
            return
        except Exception as err:  # a bug or a library's surprise: logged, one line
            from engine.logfile import unexpected_message

            message = unexpected_message(f"Model {key.name}", err)
            self.send(JobNews(job_id, JobEvent("failed", message=message)))
            return
        # the stems go straight into the library folder, checkpointed: a quit, crash or
        # cancel leaves them resumable; `resume` continues such a checkpoint (engine.job)
        job = SeparationJob(Path(path), separator, stems_dir=Path(stems_dir), resume=resume)
        ended: list[str] = []

        def on_event(event: JobEvent) -> None:
            if event.kind in ("done", "failed", "cancelled"):
                ended.append(event.kind)
            self.on_event(job, job_id, key.name, Path(mix_dir), event)

        job.on_event = on_event
        try:
            with WorkerLock(Path(stems_dir).parent):
                self.run_job(job, job_id)
        except BlockingIOError:
            ended.append("failed")
            self.send(JobNews(job_id, JobEvent("failed", message=(
                f"{Path(path).name}: its library folder is still in use by a Demixer that "
                "is stopping; try again in a moment."))))
        if not ended:  # the job died of an error it does not name: never leave it running
            why = f"{Path(path).name}: the separation stopped on an unexpected error."
            self.send(JobNews(job_id, JobEvent("failed", message=why)))

    def run_job(self, job: SeparationJob, job_id: int) -> None:
        """Run `job`, serving messages meanwhile. If the app goes away (a crash, kill -9:
        the pipe ends), cancel it, which keeps its finished chunks for the next start."""
        thread = job.start()
        try:
            while thread.is_alive():
                if self.conn.poll(POLL_S):
                    self.during_job(self.conn.recv(), job, job_id)
        except (EOFError, OSError):
            self.parent_gone = self.quitting = True
            job.cancel()
        job.finished.wait()

    def during_job(self, message: Request, job: SeparationJob, job_id: int) -> None:
        if isinstance(message, Cancel):
            if message.job_id == job_id:
                job.cancel()
        elif isinstance(message, Focus):
            if message.job_id == job_id:
                job.focus(message.frame)
        elif isinstance(message, Quit):
            job.cancel()
            self.quitting = True
        else:
            self.pending.append(message)

    def on_event(self, job: SeparationJob, job_id: int, model: str, mix_dir: Path,
                 event: JobEvent) -> None:
        """On the job's thread: keep the original mix once decoded, then report."""
        if event.kind == "stage" and event.stage == "separating":
            self.send(TrackNews(job_id, keep_mix(job, model, mix_dir)))
        self.send(JobNews(job_id, event))


def keep_mix(job: SeparationJob, model: str, mix_dir: Path) -> StemsInfo:
    """Copy the decoded original into `mix_dir`; what the GUI needs to open the stems."""
    from app.library import copy_mix
    from engine.errors import DemixerError

    track, stems = job.track, job.stems
    assert track is not None and stems is not None  # "separating" comes after decoding
    about = dict(source=str(job.path), model=model, source_rate=track.source_rate,
                 source_frames=track.source_frames)
    try:
        copy_mix(track.audio, mix_dir, track.samplerate, about)
    except OSError as err:  # raised into the job: it fails with this sentence
        raise DemixerError(f"Cannot keep the original mix of {job.path.name} in {mix_dir} "
                           f"({err.strerror or err}).") from None
    return StemsInfo(frames=int(track.audio.shape[-1]), samplerate=track.samplerate,
                     source_rate=track.source_rate, source_frames=track.source_frames,
                     sources=tuple(stems.sources), channels=stems.channels)


class WorkerLock:
    """The worker's own lock on a library folder while its job writes there (the app holds
    another, `app.library.LOCK`). A worker whose app died finishes its cancel under it, so a
    new app's resume waits for it instead of writing beside it."""

    WAIT_S = 30.0

    def __init__(self, folder: Path) -> None:
        from app.library import WORKER_LOCK

        self.path = folder / WORKER_LOCK
        self.lock: Any = None

    def __enter__(self) -> WorkerLock:
        from app.filelock import FileLock

        deadline = time.monotonic() + self.WAIT_S
        while self.lock is None:
            try:
                self.lock = FileLock(self.path)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def serve(conn: Connection, cancel_model: ProcessEvent) -> None:
    """The child's main: serve requests until "quit" or the parent goes away."""
    import torch

    try:
        os.nice(WORKER_NICE)  # background work: the GUI and playback get the CPU first
    except OSError:
        pass
    torch.set_num_threads(separation_threads())
    try:
        _Child(conn, cancel_model).run()
    except (EOFError, OSError, KeyboardInterrupt):
        pass


# --- the parent --------------------------------------------------------------------------


class WorkerClient:
    """The GUI side: starts the child on demand and hands its messages to `on_message`,
    called on a reader thread (the Qt layer turns them into queued signals). If the child
    dies, `on_message(WorkerDied(exitcode))` is called and the next request starts a new
    one."""

    def __init__(self, on_message: Callable[[News], None]) -> None:
        self.on_message = on_message
        self._ctx = multiprocessing.get_context("spawn")
        self.cancel_model = self._ctx.Event()
        self.process: Any = None
        self.conn: Connection | None = None
        self._reader: threading.Thread | None = None
        self._closing = False

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def start(self) -> None:
        if self.alive:
            return
        parent, child = self._ctx.Pipe(duplex=True)
        self.process = self._ctx.Process(target=serve, args=(child, self.cancel_model),
                                         name="demixer-worker", daemon=True)
        self.process.start()
        child.close()
        self.conn = parent
        self._reader = threading.Thread(target=self._read, args=(parent, self.process),
                                        name="demixer-worker-reader", daemon=True)
        self._reader.start()

    def send(self, message: Request) -> None:
        self.start()
        assert self.conn is not None
        try:
            self.conn.send(message)
        except OSError:  # the child died between start() and here
            self.on_message(WorkerDied(self.process.exitcode))

    def _read(self, conn: Connection, process: Any) -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                process.join(1.0)
                if not self._closing:
                    self.on_message(WorkerDied(process.exitcode))
                return
            self.on_message(message)

    def close(self, timeout: float = 5.0) -> None:
        """Ask the child to stop (cancelling its job), then make sure it has."""
        if self.process is None:
            return
        self._closing = True
        self.cancel_model.set()
        try:
            if self.conn is not None:
                self.conn.send(Quit())
        except OSError:
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(2.0)
        if self.conn is not None:
            self.conn.close()
        if self._reader is not None:
            self._reader.join(2.0)
        self.process, self.conn, self._closing = None, None, False
