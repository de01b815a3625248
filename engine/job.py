"""A separation job: decode -> separate (streaming) -> write, on a worker thread, with events.

The GUI and the CLI drive the same `SeparationJob`. It reports `JobEvent`s through a callback
(called on the worker thread: the GUI turns them into Qt signals), exposes the growing stems
(`job.stems`, readable inside `job.stems.final`) as soon as decoding is done, and cancels
through a `threading.Event` checked between chunks. `job.focus(frame)` (any thread) moves
the work to the listener's playhead: the chunks around it first, then on from there, the
skipped part last (`engine.separator.Focus`); the stems stay bit for bit the same.

Resume. With a `stems_dir` (the app's library folder, or the CLI's `engine.partial` run
folder) the job checkpoints as it goes (`StemBuffers.begin`): the stems' data is fsynced, then
`stems.json` records how far they are final and what a resume must reproduce (the input's
size and mtime, a fingerprint of model, backends and options, the decoded length, mean and std,
the shift offsets). A job started on a folder that holds such a checkpoint for the same input
and settings (`engine.partial.inspect(folder, job.fingerprint())` tells beforehand) decodes the
song again, checks that it decodes to the same samples' length, mean and std, and continues
from the checkpoint: the stems come out bit for bit as from one uninterrupted run. If anything
differs it starts afresh. A cancel (`cancel()`), a failure, a crash, a kill or a power loss
leaves the finished chunks in the folder; `cancel(discard=True)` removes them.
Without a `stems_dir` the stems live in a temporary folder and go with the job.

Every failure ends the job with `result.error`: one sentence naming the file and the reason.
An exception Demixer does not foresee is logged in full (`engine.logfile`) and reported in one
line naming that log; it never escapes the thread.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.decode import DecodedTrack, decode
from engine.errors import Cancelled, DemixerError
from engine.logfile import unexpected_message
from engine.outputs import OutputPlan, check_outputs, write_outputs
from engine.partial import FolderLock, digest, inspect, new_workdir, source_identity
from engine.separator import Focus, Progress, Separator
from engine.stembuffers import INDEX, StemBuffers, read_index
from engine.writers import export_rate, io_reason

RECORD_VERSION = 1


@dataclass(frozen=True)
class JobEvent:
    # "stage" | "progress" | "ready" | "resumed" | "notice" | "done" | "failed" | "cancelled"
    kind: str
    stage: str = ""  # "decoding" | "separating" | "writing"
    fraction: float = 0.0  # of the current stage, 0..1 ("resumed": how far the stems were)
    eta_s: float | None = None
    ready_frames: int = 0  # stems are final for [0, ready_frames) at the model rate
    message: str = ""  # "notice": one sentence to show once (a warning, a status line)
    # "ready", "resumed": where the stems are final, ((start, stop), ...) at the model rate
    # (out of order after a seek; `ready_frames` is its prefix)
    final: tuple[tuple[int, int], ...] = ()


@dataclass
class JobResult:
    path: Path
    ok: bool = False
    cancelled: bool = False
    error: str | None = None
    written: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: float | None = None  # the fraction this run started from, if it resumed
    resumable: float | None = None  # after a cancel or failure: the fraction kept for later


class SeparationJob:
    def __init__(self, path: Path, separator: Separator, *, plan: OutputPlan | None = None,
                 stems_dir: Path | None = None,
                 on_event: Callable[[JobEvent], None] | None = None,
                 workdir: Path | None = None, resume: bool = True,
                 track_name: str | None = None) -> None:
        """`plan` None writes no files (the app exports on demand). `stems_dir` keeps the raw
        stems there, resumable (see module docstring; `resume` False always starts afresh);
        None keeps them in a temporary folder. After a successful run with a `stems_dir`,
        `job.stems` stays open for reading (the caller closes it). `workdir` (default: a fresh
        locked folder in the data folder, see `engine.partial`) takes the decoded track; it
        is emptied at the end. `track_name` replaces the input's name in the outputs' {track}."""
        self.path = Path(path)
        self.track_name = track_name
        self.separator = separator
        self.plan = plan
        self.cancel_event = threading.Event()
        self._focus = Focus()
        self.on_event = on_event or (lambda e: None)
        self.resumable = stems_dir is not None
        self.resume = resume
        self.workdir = workdir
        self._given_workdir = workdir is not None
        self._work_lock: FolderLock | None = None
        self.stems_dir = stems_dir
        self.track: DecodedTrack | None = None
        self.stems: StemBuffers | None = None
        self.result = JobResult(self.path)
        self._discard = False
        self._created_stems = False  # this job made fresh stem files (not a resume)
        self._stems_dir_existed = False
        self._source = source_identity(self.path)
        # NB: waiting uses this event, not Thread.join: a join interrupted by Ctrl-C can make
        # a later join return while the thread still runs (CPython 3.11).
        self.finished = threading.Event()
        self._thread: threading.Thread | None = None

    def fingerprint(self) -> str:
        """A digest of what decides the stems: the input's identity, the model and backends,
        the options. A checkpoint with another fingerprint is never resumed."""
        sep = self.separator
        return digest({"version": RECORD_VERSION, "source": self._source,
                       "separator": sep.identity(), "options": asdict(sep.options)})

    def start(self) -> threading.Thread:
        # NB: not a daemon: the interpreter waits for it at exit instead of killing it inside
        # torch or numpy (a daemon thread stopped there aborts the process, exit 134).
        self._thread = threading.Thread(target=self.run, name=f"demixer-job-{self.path.name}")
        self._thread.start()
        return self._thread

    def cancel(self, discard: bool = False) -> None:
        """Stop between chunks. The finished chunks stay resumable unless `discard`."""
        self._discard = self._discard or discard
        self.cancel_event.set()

    def focus(self, frame: int) -> None:
        """Separate around `frame` (model rate) first: the listener moved the playhead there.
        NB: any thread; the separator reads it between network calls."""
        self._focus.frame = max(0, int(frame))

    def wait(self, timeout: float | None = None) -> JobResult:
        """The result once the job has finished (or after `timeout` seconds)."""
        if self._thread is not None:
            self.finished.wait(timeout)
        return self.result

    def run(self) -> JobResult:
        t0 = time.monotonic()
        try:
            self._run()
            self.result.ok = True
            self.on_event(JobEvent("done", message=f"{self.path.name}: done"))
        except Cancelled:
            self.result.cancelled = True
            self._keep_or_discard()
            self.on_event(JobEvent("cancelled", message=f"{self.path.name}: cancelled"))
        except DemixerError as err:
            self._fail(str(err))
        except MemoryError:
            self._fail(f"{self.path}: not enough memory to separate this file.")
        except OSError as err:  # the stems' or the decoded track's disk: full, gone, read-only
            self._fail(self._disk_message(err))
        except Exception as err:  # a bug or a library's surprise: logged, one line
            self._fail(unexpected_message(str(self.path), err))
        finally:
            self.result.seconds = time.monotonic() - t0
            self._cleanup()
            self.finished.set()
        return self.result

    def _run(self) -> None:
        sep = self.separator
        if self.plan is not None:
            check_outputs(self.plan, self.path, sep.sources, self.track_name)  # before work
        workdir = self._prepare_workdir()
        self.on_event(JobEvent("stage", stage="decoding"))
        self.track = decode(self.path, sep.samplerate, workdir, cancel=self.cancel_event,
                            progress=lambda f: self.on_event(
                                JobEvent("progress", stage="decoding", fraction=f)))
        self.stems, offsets = self._open_stems(self.track)
        self.on_event(JobEvent("stage", stage="separating"))
        if not self.stems.complete:
            sep.separate(self.track.audio, self.track.mean, self.track.std, self.stems,
                         cancel=self.cancel_event, on_progress=self._on_progress,
                         offsets=offsets, on_notice=self._on_notice, focus=self._focus)
        self.stems.save_index(complete=True, extra={"source": str(self.path)})
        if self.plan is not None:
            self.on_event(JobEvent("stage", stage="writing"))
            rate, frames = self._output_rate()
            self.result.written = write_outputs(self.plan, self.path, self.stems, rate, frames,
                                                cancel=self.cancel_event,
                                                track_name=self.track_name,
                                                mix=self.track.audio)

    def _on_notice(self, text: str) -> None:
        self.on_event(JobEvent("notice", message=text))

    def _prepare_workdir(self) -> Path:
        self._stems_dir_existed = self.stems_dir is not None and self.stems_dir.exists()
        if self.workdir is None:
            self.workdir, self._work_lock = new_workdir()
        if self.stems_dir is None:
            self.stems_dir = self.workdir / "stems"
        return self.workdir

    def _open_stems(self, track: DecodedTrack) -> tuple[StemBuffers, Sequence[int] | None]:
        """The stems to separate into, and the shift offsets: resumed if possible."""
        assert self.stems_dir is not None
        resumed = self._try_resume(track) if self.resumable and self.resume else None
        if resumed is not None:
            return resumed
        sep = self.separator
        offsets = sep.draw_offsets()
        stems = StemBuffers(self.stems_dir, sep.sources, sep.shapes.channels,
                            track.audio.shape[-1], sep.samplerate)
        self._created_stems = True
        if self.resumable:
            stems.begin({"version": RECORD_VERSION, "fingerprint": self.fingerprint(),
                         "source": self._source, "frames": track.audio.shape[-1],
                         "mean": track.mean, "std": track.std,
                         "offsets": None if offsets is None else list(offsets)})
        return stems, offsets

    def _try_resume(self, track: DecodedTrack
                    ) -> tuple[StemBuffers, Sequence[int] | None] | None:
        assert self.stems_dir is not None
        state = inspect(self.stems_dir, self.fingerprint())
        record = (read_index(self.stems_dir) or {}).get("resume") or {}
        same_audio = (record.get("frames") == track.audio.shape[-1]
                      and record.get("mean") == track.mean and record.get("std") == track.std)
        if not (state.resumable and same_audio):
            return None
        try:
            stems = StemBuffers.resume(self.stems_dir)
        except (OSError, ValueError):
            return None
        self.result.resumed_from = state.fraction
        self.on_event(JobEvent("resumed", fraction=state.fraction,
                               ready_frames=stems.ready_frames, final=stems.final.spans,
                               message=f"resuming {self.path.name} from "
                                       f"{int(state.fraction * 100)}%"))
        offsets = record.get("offsets")
        return stems, None if offsets is None else tuple(int(o) for o in offsets)

    def _output_rate(self) -> tuple[int, int]:
        """Stems go out at the input's rate and exact length unless the plan keeps 44.1 kHz."""
        assert self.track is not None and self.plan is not None
        t = self.track
        return export_rate(self.plan.fmt, (t.source_rate, t.source_frames),
                           (t.samplerate, t.audio.shape[-1]), self.plan.keep_model_rate)

    def _on_progress(self, p: Progress) -> None:
        self.on_event(JobEvent("progress", stage="separating", fraction=p.fraction,
                               eta_s=p.eta_s, ready_frames=p.ready_frames))
        self.on_event(JobEvent("ready", stage="separating", ready_frames=p.ready_frames,
                               final=p.final.spans))

    def _disk_message(self, err: OSError) -> str:
        folder = Path(err.filename).parent if err.filename else (
            self.stems_dir or self.workdir or Path("."))
        return (f"{self.path}: cannot be separated, because {folder} cannot be written "
                f"({io_reason(err, folder / '_')}).")

    def _fail(self, message: str) -> None:
        self.result.error = message
        self._keep_or_discard()
        self.on_event(JobEvent("failed", message=message))

    def _keep_or_discard(self) -> None:
        """After a cancel or failure: keep checkpointed stems for a resume (unless a discard
        was asked for, or they are temporary), else remove them."""
        stems, self.stems = self.stems, None
        kept = False
        if stems is not None:
            try:
                if self.resumable and not self._discard and stems.final:
                    stems.checkpoint()
                    kept = True
            except OSError:
                pass  # the last checkpoint on disk still holds (e.g. the disk is full now)
            finally:
                stems.close()
        if self.resumable and not self._discard and not kept:
            kept = inspect(self.stems_dir or Path()).resumable  # an earlier checkpoint
        if kept:
            self.result.resumable = inspect(self.stems_dir or Path()).fraction
        elif self._discard or self._created_stems:
            self._remove_stems()

    def _remove_stems(self) -> None:
        """Remove the stem files (and the folder, if this job made it); never anything else
        a folder given by the caller holds."""
        folder = self.stems_dir
        if folder is None or not folder.exists():
            return
        if not self._stems_dir_existed:
            shutil.rmtree(folder, ignore_errors=True)
            return
        for name in [f"{s}.f32" for s in self.separator.sources] + [INDEX]:
            (folder / name).unlink(missing_ok=True)

    def _cleanup(self) -> None:
        """Close everything; remove the decoded track (and temporary stems)."""
        if self.track is not None:
            self.track.close()
        if self.stems is not None and not (self.result.ok and self.resumable):
            self.stems.close()  # finished stems in the caller's folder stay open: theirs
            self.stems = None
        if self.workdir is not None:
            if self._given_workdir:
                for leftover in self.workdir.glob("decoded-*"):
                    leftover.unlink(missing_ok=True)
                if not self.resumable:
                    shutil.rmtree(self.workdir / "stems", ignore_errors=True)
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)
        if self._work_lock is not None:
            self._work_lock.release()
