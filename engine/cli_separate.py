"""`demixer separate`: many files, one model, one line per file, exit 0/1/2."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

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
    from engine.cli_models import download_printer, stage_printer
    from engine.pipeline import build_separator

    convert_progress = None
    kind = resolve_backend_kind(args.backend)
    if kind == "coreml" or kind in EXPORTED_KINDS:  # the first run converts: show it
        convert_progress = stage_printer()
    return build_separator(name, repo=args.repo, backend=args.backend, device=args.device,
                           options=options, progress=download_printer(),
                           precision=args.precision, compute_units=args.compute_units,
                           convert_progress=convert_progress, threads=args.jobs or None)


def check_usage(args: argparse.Namespace, name: str) -> tuple[SeparationOptions, OutputPlan]:
    """Everything that can be checked before any work; `DemixerError`s are usage errors."""
    from engine.backends import (
        EXPORTED_KINDS,
        check_device,
        check_exported_precision,
        resolve_backend_kind,
    )

    options, plan = options_from(args), plan_from(args, name)
    kind = resolve_backend_kind(args.backend)
    if kind in EXPORTED_KINDS:  # the device is torch's; these runtimes run on the CPU
        check_exported_precision(kind, args.precision)
    elif kind != "coreml":
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
    job = SeparationJob(track, separator, plan=plan, on_event=bar.update if bar else None)
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
