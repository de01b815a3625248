"""`demixer separate`: many files, one model, one line per file, exit 0/1/2.

Usage mistakes (`engine.cli.usage`) are reported before the model loads, exit 2. Each file
runs as a resumable job in its own `engine.partial` folder: Ctrl-C or SIGTERM stops it
between chunks and keeps what is finished, and so does a kill or a crash (up to the last
checkpoint); running the same command again resumes it ("resuming song.wav from 63%") and
gives the same stems, bit for bit. Two inputs with the same name in one batch
(`a/song.wav b/song.flac`) get distinct output folders: the second one's is `song (2)`,
said in one line.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

from engine.calibrate import CalibrationProgress
from engine.catalogue import default_model
from engine.decode import find_audio_files
from engine.errors import DemixerError, UsageError
from engine.job import JobEvent, JobResult, SeparationJob
from engine.names import printable
from engine.outputs import OutputPlan, outputs_for, parse_mix
from engine.separator import SeparationOptions, Separator
from engine.writers import OutputFormat

SIGTERM_EXIT = 143
SIGINT_EXIT = 130


def expand_tracks(paths: list[Path]) -> list[Path]:
    """`find_audio_files`, except that a folder with no audio stays in the list, so that it
    fails with its own one-line message instead of vanishing from the batch."""
    return [track for path in paths for track in (find_audio_files([path]) or [path])]


def options_from(args: argparse.Namespace) -> SeparationOptions:
    offsets = None
    if args.shift_offsets:
        try:
            offsets = tuple(int(v) for v in args.shift_offsets.split(","))
        except ValueError:
            raise UsageError("--shift-offsets takes whole numbers, e.g. 1200,20000.") from None
    return SeparationOptions(shifts=args.shifts, overlap=args.overlap, segment=args.segment,
                             seed=args.seed, shift_offsets=offsets)


def plan_from(args: argparse.Namespace, model_name: str) -> OutputPlan:
    fmt = OutputFormat(container="flac" if args.flac else "mp3" if args.mp3 else "wav",
                       sample_format="float32" if args.float32 else
                       "int24" if args.int24 else "int16",
                       mp3_bitrate=args.mp3_bitrate, clip_mode=args.clip_mode)
    try:
        fmt.validate()
        mixes = tuple(parse_mix(m) for m in args.mix)
    except UsageError:
        raise
    except DemixerError as err:
        raise UsageError(str(err)) from None
    return OutputPlan(root=args.out, model_name=model_name, template=args.filename, fmt=fmt,
                      two_stems=args.two_stems, mixes=mixes,
                      keep_model_rate=args.keep_model_rate, overwrite=args.overwrite)


def _load(args: argparse.Namespace, name: str, options: SeparationOptions) -> Separator:
    from engine.backends import EXPORTED_KINDS, resolve_backend_kind
    from engine.cli.calibrate import progress_printer
    from engine.cli.models import download_printer, stage_printer
    from engine.pipeline import build_separator, uses_calibration

    calibrated = uses_calibration(args.backend, args.precision, args.compute_units,
                                  args.device)
    convert_progress = None
    kind = resolve_backend_kind(args.backend)
    if calibrated or kind in ("coreml", "mlx") or kind in EXPORTED_KINDS:
        convert_progress = stage_printer()  # the first run converts or exports: show it
    t0 = time.monotonic()
    shown = progress_printer(name)
    ran: list[bool] = []

    def calibrating(p: CalibrationProgress) -> None:
        ran.append(True)
        shown(p)

    separator = build_separator(name, repo=args.repo, backend=args.backend,
                                device=args.device, options=options,
                                progress=download_printer(), precision=args.precision,
                                compute_units=args.compute_units,
                                convert_progress=convert_progress, threads=args.jobs or None,
                                quality=args.quality, calibrate_progress=calibrating)
    if ran:  # the first run on this machine: say what came of it
        chosen = getattr(separator.backends[0], "candidate", None)
        label = chosen.label if chosen is not None else separator.backends[0].name
        print(f"demixer: calibrated in {time.monotonic() - t0:.1f} s; {args.quality} "
              f"quality runs on {label} (`demixer models calibrate {name}` shows the "
              f"table).", file=sys.stderr)
    return separator


def _err(text: str) -> None:
    """One line on stderr; control characters in names are shown escaped."""
    print(f"demixer: {printable(text)}", file=sys.stderr, flush=True)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[list[int]]:
    """SIGTERM is handled like Ctrl-C (the job stops between chunks and stays resumable);
    yields a list that holds the signal number once one arrived."""
    got: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        got.append(signum)
        raise KeyboardInterrupt

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield got
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def run_separate(args: argparse.Namespace) -> int:
    from engine.cli.usage import check_after_load, check_usage

    name = args.name or default_model()
    try:
        options, plan = options_from(args), plan_from(args, name)
        check_usage(args, name, options, plan)
    except DemixerError as err:
        _err(str(err))
        return 2
    with _sigterm_as_interrupt() as signals:
        try:
            code = _run_batch(args, name, options, plan, check_after_load)
        except KeyboardInterrupt:
            _err("interrupted before any file was started.")
            code = SIGINT_EXIT
    return SIGTERM_EXIT if code == SIGINT_EXIT and signals else code


def _run_batch(args: argparse.Namespace, name: str, options: SeparationOptions,
               plan: OutputPlan, check_after_load: Any) -> int:
    from engine.backends import EXPORTED_KINDS
    from engine.partial import clean_stale

    if args.jobs > 0 and args.backend not in EXPORTED_KINDS:
        import torch  # the exported runtimes get the count instead (build_separator)

        torch.set_num_threads(args.jobs)
    tracks = expand_tracks(args.tracks)
    try:
        clean_stale()
        separator = _load(args, name, options)
        check_after_load(plan, separator)
        names = _output_names(tracks, plan, separator)
    except UsageError as err:
        _err(str(err))
        return 2
    except DemixerError as err:
        _err(str(err))
        return 1
    failed = 0
    for track, track_name in zip(tracks, names, strict=True):
        ok = _separate_one(track, separator, plan, track_name)
        if ok is None:
            return SIGINT_EXIT
        failed += not ok
    return 1 if failed else 0


def _output_names(tracks: list[Path], plan: OutputPlan, separator: Separator
                  ) -> list[str | None]:
    """The {track} name of each input: its own, or `NAME (2)`, `NAME (3)`... for a later
    input whose outputs would land on an earlier one's (said in one line)."""
    from engine.outputs import output_paths

    names: list[str | None] = []
    taken: dict[Path, Path] = {}
    outputs = list(outputs_for(plan, separator.sources))
    for track in tracks:
        name, n = track.stem, 1
        while set(paths := output_paths(plan, track, outputs, name).values()) & taken.keys():
            if "{track}" not in plan.template:
                raise UsageError(f"--filename '{plan.template}' has no {{track}}, so every "
                                 "file would be written to the same stems; add {track}.")
            n += 1
            name = f"{track.stem} ({n})"
        if n > 1:
            first = taken[next(iter(set(output_paths(plan, track, outputs).values())
                                    & taken.keys()))]
            print(f"demixer: {printable(track)} has the same name as {printable(first)}: "
                  f"its stems go to '{printable(name)}'.", file=sys.stderr)
        taken.update(dict.fromkeys(paths, track))
        names.append(name if n > 1 else None)
    return names


def _run_key(track: Path, separator: Separator, plan: OutputPlan,
             track_name: str | None) -> dict[str, Any]:
    from engine.partial import source_identity

    return {"source": source_identity(track), "separator": separator.identity(),
            "options": asdict(separator.options), "out": str(plan.root.absolute()),
            "template": plan.template, "track_name": track_name}


def _separate_one(track: Path, separator: Separator, plan: OutputPlan,
                  track_name: str | None) -> bool | None:
    """True if done, False if it failed; None if interrupted (Ctrl-C, SIGTERM)."""
    from engine.partial import open_run

    try:
        run = open_run(_run_key(track, separator, plan, track_name), track)
    except DemixerError as err:
        _err(str(err))
        return False
    bar = _ProgressBar(track) if sys.stderr.isatty() else None
    job = SeparationJob(track, separator, plan=plan, stems_dir=run.stems_dir,
                        workdir=run.work_dir, track_name=track_name,
                        on_event=_Reporter(track, bar))
    try:
        result = _wait(job)
    finally:
        if bar:
            bar.close()
        if job.stems is not None:
            job.stems.close()
        done = job.finished.is_set()
        run.close(remove=done and (job.result.ok or job.result.resumable is None))
    if result is None:
        _report_interrupt(track, job.result)
        return None
    return _report(track, result, plan)


def _wait(job: SeparationJob) -> JobResult | None:
    """Run `job` to its end; None if Ctrl-C or SIGTERM stopped it (it is stopped cleanly)."""
    thread = job.start()
    try:
        while not job.finished.wait(0.2):
            pass
    except KeyboardInterrupt:  # stop between chunks, keep what is finished
        job.cancel()
        _join(job, thread)
        return None
    _join(job, thread)  # NB: never leave it running into interpreter shutdown
    return job.result


def _join(job: SeparationJob, thread: threading.Thread) -> None:
    """Wait for the job's thread to end; a second Ctrl-C does not cut the wait short (the
    job is stopping already, and its checkpoint must be written)."""
    while True:  # NB: the event first: a join cut short by Ctrl-C can go wrong (job.py)
        try:
            if job.finished.wait(0.2):
                break
        except KeyboardInterrupt:
            job.cancel()
    while True:  # the thread is past its last line: this join is short
        try:
            thread.join()
            return
        except KeyboardInterrupt:
            job.cancel()


def _report_interrupt(track: Path, result: JobResult) -> None:
    if result.ok:  # it finished before the interrupt reached it
        return
    if result.resumable is not None:
        _err(f"interrupted; run the same command again to resume {printable(track.name)} "
             f"from {int(result.resumable * 100)}%.")
    else:
        _err(f"interrupted; nothing of {printable(track.name)} was written.")


def _report(track: Path, result: JobResult, plan: OutputPlan) -> bool:
    if result.ok:
        folder = result.written[0].parent if result.written else plan.root
        print(f"{printable(track)}: {len(result.written)} stems in {printable(folder)} "
              f"({result.seconds:.1f} s)")
        return True
    message = result.error or f"{track}: stopped"
    if result.resumable is not None:
        message = (f"{message.rstrip('.')}; the finished {int(result.resumable * 100)}% is "
                   "kept, run the same command again to resume.")
    _err(message)
    return False


class _Reporter:
    """Job events -> the progress bar and the one "resuming" line."""

    def __init__(self, track: Path, bar: _ProgressBar | None) -> None:
        self.track = track
        self.bar = bar

    def __call__(self, event: JobEvent) -> None:
        if event.kind in ("resumed", "notice"):  # notice: e.g. a backend handed over
            prefix = f"warning: {self.track}: " if event.kind == "notice" else ""
            line = f"demixer: {prefix}{printable(event.message)}"
            if self.bar is not None:
                self.bar.write(line)
            else:
                print(line, file=sys.stderr, flush=True)
        elif self.bar is not None:
            self.bar.update(event)


class _ProgressBar:
    """A tqdm bar per file on a terminal: the stage, percent and ETA."""

    def __init__(self, track: Path) -> None:
        from tqdm import tqdm

        # NB: a terminal that reports a size of 0 x 0 (a pty under `script`, some IDE
        # consoles) made tqdm draw nothing: a bar on row 0 of 0 rows counts as off-screen.
        # shutil falls back to 80 x 24 there.
        size = shutil.get_terminal_size((80, 24))
        self.bar = tqdm(total=100, desc=printable(track.name), unit="%", leave=False,
                        file=sys.stderr, mininterval=0.0, ncols=size.columns, nrows=size.lines,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")
        self.lock = threading.Lock()

    def update(self, event: JobEvent) -> None:
        if event.kind != "progress":
            return
        with self.lock:
            self.bar.n = round(event.fraction * 100)
            eta = f", {event.eta_s:.0f} s left" if event.eta_s is not None else ""
            self.bar.set_postfix_str(f"{event.stage}{eta}", refresh=True)

    def write(self, line: str) -> None:
        with self.lock:
            self.bar.write(line, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()
