"""A separation job: decode -> separate (streaming) -> write, on a worker thread, with events.

The GUI and the CLI drive the same `SeparationJob`. It reports `JobEvent`s through a callback
(called on the worker thread: the GUI turns them into Qt signals), exposes the growing stems
(`job.stems`, readable below `job.stems.ready_frames`) as soon as decoding is done, and cancels
through a `threading.Event` checked between chunks, leaving no output files behind.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.decode import DecodedTrack, decode
from engine.errors import Cancelled, DemixerError
from engine.outputs import OutputPlan, check_outputs, write_outputs
from engine.resample import resampled_length
from engine.separator import Progress, Separator
from engine.stembuffers import StemBuffers


@dataclass(frozen=True)
class JobEvent:
    kind: str  # "stage" | "progress" | "ready" | "notice" | "done" | "failed" | "cancelled"
    stage: str = ""  # "decoding" | "separating" | "writing"
    fraction: float = 0.0  # of the current stage, 0..1
    eta_s: float | None = None
    ready_frames: int = 0  # stems are final for [0, ready_frames) at the model rate
    message: str = ""  # "notice": one sentence to show once (a warning, a status line)


@dataclass
class JobResult:
    path: Path
    ok: bool = False
    cancelled: bool = False
    error: str | None = None
    written: list[Path] = field(default_factory=list)
    seconds: float = 0.0


class SeparationJob:
    def __init__(self, path: Path, separator: Separator, *, plan: OutputPlan | None = None,
                 stems_dir: Path | None = None,
                 on_event: Callable[[JobEvent], None] | None = None) -> None:
        """`plan` None writes no files (the app exports on demand); `stems_dir` keeps the
        raw stems there (the app's library) instead of in a temporary folder."""
        self.path = Path(path)
        self.separator = separator
        self.plan = plan
        self.cancel_event = threading.Event()
        self.on_event = on_event or (lambda e: None)
        self._keep_stems = stems_dir is not None
        self.workdir = Path(tempfile.mkdtemp(prefix="demixer-"))
        self.stems_dir = stems_dir or self.workdir / "stems"
        self.track: DecodedTrack | None = None
        self.stems: StemBuffers | None = None
        self.result = JobResult(self.path)
        # NB: waiting uses this event, not Thread.join: a join interrupted by Ctrl-C can make
        # a later join return while the thread still runs (CPython 3.11).
        self.finished = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, name=f"demixer-job-{self.path.name}",
                                        daemon=True)
        self._thread.start()
        return self._thread

    def cancel(self) -> None:
        self.cancel_event.set()

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
            self._discard_stems()
            self.on_event(JobEvent("cancelled", message=f"{self.path.name}: cancelled"))
        except DemixerError as err:
            self._fail(str(err))
        except MemoryError:
            self._fail(f"{self.path}: not enough memory to separate this file.")
        finally:
            self.result.seconds = time.monotonic() - t0
            self._cleanup()
            self.finished.set()
        return self.result

    def _run(self) -> None:
        sep = self.separator
        if self.plan is not None:
            check_outputs(self.plan, self.path, sep.sources)  # fail before any work
        self.on_event(JobEvent("stage", stage="decoding"))
        self.track = decode(self.path, sep.samplerate, self.workdir, cancel=self.cancel_event,
                            progress=lambda f: self.on_event(
                                JobEvent("progress", stage="decoding", fraction=f)))
        self.stems = StemBuffers(self.stems_dir, sep.sources, sep.shapes.channels,
                                 self.track.audio.shape[-1], sep.samplerate)
        self.on_event(JobEvent("stage", stage="separating"))
        sep.separate(self.track.audio, self.track.mean, self.track.std, self.stems,
                     cancel=self.cancel_event, on_progress=self._on_progress,
                     on_notice=lambda text: self.on_event(JobEvent("notice", message=text)))
        self.stems.save_index(complete=True, extra={"source": str(self.path)})
        if self.plan is not None:
            self.on_event(JobEvent("stage", stage="writing"))
            rate, frames = self._output_rate()
            self.result.written = write_outputs(self.plan, self.path, self.stems, rate, frames,
                                                cancel=self.cancel_event)

    def _output_rate(self) -> tuple[int, int]:
        """Stems go out at the input's rate and exact length unless the plan keeps 44.1 kHz."""
        assert self.track is not None and self.plan is not None
        t = self.track
        rate, frames = (t.samplerate, t.audio.shape[-1]) if self.plan.keep_model_rate else (
            t.source_rate, t.source_frames)
        out_rate = self.plan.fmt.rate_for(rate)  # MP3 cannot carry e.g. 96 kHz
        return out_rate, resampled_length(frames, rate, out_rate)

    def _on_progress(self, p: Progress) -> None:
        self.on_event(JobEvent("progress", stage="separating", fraction=p.fraction,
                               eta_s=p.eta_s, ready_frames=p.ready_frames))
        self.on_event(JobEvent("ready", stage="separating", ready_frames=p.ready_frames))

    def _fail(self, message: str) -> None:
        self.result.error = message
        self._discard_stems()
        self.on_event(JobEvent("failed", message=message))

    def _discard_stems(self) -> None:
        if self.stems is not None:
            self.stems.close()
            self.stems = None
        shutil.rmtree(self.stems_dir, ignore_errors=True)

    def _cleanup(self) -> None:
        if self.track is not None:
            self.track.close()
        if not self._keep_stems and self.stems is not None:
            self.stems.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
