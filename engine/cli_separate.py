"""`demixer separate`: many files, one model, one line per file, exit 0/1/2."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from engine.calibrate import CalibrationProgress
from engine.catalogue import default_model
from engine.decode import find_audio_files
from engine.errors import DemixerError
from engine.job import JobEvent, SeparationJob
from engine.outputs import OutputPlan, parse_mix
from engine.separator import SeparationOptions, Separator
from engine.writers import OutputFormat


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
            raise DemixerError("--shift-offsets takes whole numbers, e.g. 1200,20000.") from None
    return SeparationOptions(shifts=args.shifts, overlap=args.overlap, segment=args.segment,
                             seed=args.seed, shift_offsets=offsets)


def plan_from(args: argparse.Namespace, model_name: str) -> OutputPlan:
    fmt = OutputFormat(container="flac" if args.flac else "mp3" if args.mp3 else "wav",
                       sample_format="float32" if args.float32 else
                       "int24" if args.int24 else "int16",
                       mp3_bitrate=args.mp3_bitrate, clip_mode=args.clip_mode)
    fmt.validate()
    return OutputPlan(root=args.out, model_name=model_name, template=args.filename, fmt=fmt,
                      two_stems=args.two_stems, mixes=tuple(parse_mix(m) for m in args.mix),
                      keep_model_rate=args.keep_model_rate, overwrite=args.overwrite)


def _load(args: argparse.Namespace, name: str, options: SeparationOptions) -> Separator:
    from engine.backends import EXPORTED_KINDS, resolve_backend_kind
    from engine.cli_calibrate import progress_printer
    from engine.cli_models import download_printer, stage_printer
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


def check_usage(args: argparse.Namespace, name: str) -> tuple[SeparationOptions, OutputPlan]:
    """Everything that can be checked before any work; `DemixerError`s are usage errors."""
    from engine.backends import check_device, check_precision, resolve_backend_kind

    options, plan = options_from(args), plan_from(args, name)
    kind = resolve_backend_kind(args.backend)
    check_precision(kind, args.precision)
    if kind == "torch":  # the device is torch's; the other runtimes choose their own
        check_device(args.device)
    return options, plan


def run_separate(args: argparse.Namespace) -> int:
    name = args.name or default_model()
    try:
        options, plan = check_usage(args, name)
    except DemixerError as err:
        print(f"demixer: {err}", file=sys.stderr)
        return 2
    from engine.backends import EXPORTED_KINDS

    if args.jobs > 0 and args.backend not in EXPORTED_KINDS:
        import torch  # the exported runtimes get the count instead (build_separator)

        torch.set_num_threads(args.jobs)
    try:
        separator = _load(args, name, options)
    except DemixerError as err:
        print(f"demixer: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demixer: cancelled.", file=sys.stderr)
        return 130
    failed = 0
    try:
        for track in expand_tracks(args.tracks):
            failed += not _separate_one(track, separator, plan)
    except KeyboardInterrupt:  # the job was cancelled and cleaned up in _separate_one
        print("demixer: cancelled; no partial stems were left behind.", file=sys.stderr)
        return 130
    return 1 if failed else 0


def _separate_one(track: Path, separator: Separator, plan: OutputPlan) -> bool:
    bar = _ProgressBar(track) if sys.stderr.isatty() else None

    def on_event(event: JobEvent) -> None:
        if event.kind == "notice":  # e.g. a backend handed over: once, as a warning
            print(f"demixer: warning: {track}: {event.message}", file=sys.stderr, flush=True)
        elif bar is not None:
            bar.update(event)

    job = SeparationJob(track, separator, plan=plan, on_event=on_event)
    job.start()
    try:
        while not job.finished.wait(0.2):
            pass
    except KeyboardInterrupt:  # Ctrl-C: cancel cleanly, leave no half-written stems
        job.cancel()
        job.wait()
        raise
    finally:
        if bar:
            bar.close()
    result = job.result
    if result.ok:
        folder = result.written[0].parent if result.written else plan.root
        print(f"{track}: {len(result.written)} stems in {folder} ({result.seconds:.1f} s)")
        return True
    print(f"demixer: {result.error or 'cancelled'}", file=sys.stderr)
    return False


class _ProgressBar:
    """A tqdm bar per file on a terminal: the stage, percent and ETA."""

    def __init__(self, track: Path) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=100, desc=track.name, unit="%", leave=False,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")
        self.lock = threading.Lock()

    def update(self, event: JobEvent) -> None:
        if event.kind != "progress":
            return
        with self.lock:
            self.bar.n = round(event.fraction * 100)
            eta = f", {event.eta_s:.0f} s left" if event.eta_s is not None else ""
            self.bar.set_postfix_str(f"{event.stage}{eta}", refresh=True)

    def close(self) -> None:
        self.bar.close()
