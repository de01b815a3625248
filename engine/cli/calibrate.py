"""`demixer models calibrate`, the calibration table, and its progress on stderr.

`demixer models calibrate NAME [--repo DIR] [--quality exact|default|fast] [--all] [--json]`
measures every candidate afresh (`engine.calibrate`), caches the result and prints the table
(backend, precision, compute units, seconds per chunk, worst-stem SNR, passed or why not,
the one chosen for the quality); `--json` prints it as one JSON object instead:
    {"model", "quality", "seconds", "candidates": [{"backend", "precision", "units",
     "seconds", "snr_db", "passed", "reason"}, ...], "chosen": {...}, "choices": {...}}
`snr_db` is null for the reference (what the others are compared with; infinite), for a
candidate whose stems are identical to it, and for candidates that failed. Progress goes to
stderr; exit 0 done, 1 a failure (one sentence).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from engine.calibrate import (
    GATES,
    QUALITIES,
    Calibration,
    CalibrationProgress,
    cached_calibrations,
    is_stale,
)


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def add_calibrate_command(msub: argparse._SubParsersAction) -> None:
    p = msub.add_parser("calibrate", help="measure every backend on this machine and choose "
                                          "the fastest that passes the quality gate")
    p.add_argument("name", help="model name, e.g. htdemucs_6s")
    p.add_argument("--repo", type=Path, help="a demucs-style folder of checkpoints to use")
    p.add_argument("--quality", default="default", choices=QUALITIES,
                   help="the gate the choice shown must pass: exact (70 dB), default "
                        "(60 dB), fast (40 dB); all three are measured at once")
    p.add_argument("--all", action="store_true",
                   help="also measure the candidates the automatic calibration skips "
                        "(e.g. MLX's slow CPU build)")
    p.add_argument("--json", action="store_true", help="print the table as one JSON object")
    p.set_defaults(func=run_calibrate)


def progress_printer(model: str, first_use: bool = True
                     ) -> Callable[[CalibrationProgress], None]:
    """Calibration progress on stderr: a line per finished candidate (a terminal also sees
    the step in progress, on one line that is overwritten)."""
    why = " (first use on this machine only)" if first_use else ""
    tty = sys.stderr.isatty()
    started: list[bool] = []

    def show(p: CalibrationProgress) -> None:
        if not started:
            started.append(True)
            _err(f"Calibrating {model} on this machine: each backend runs one fixed chunk "
                 f"and is checked against PyTorch fp32{why}.")
        if p.measurement is not None:
            end = "\r\033[K" if tty else ""
            _err(f"{end}  [{p.fraction:4.0%}] {p.candidate}: {p.message}")
        elif tty:
            print(f"\r\033[K  [{p.fraction:4.0%}] {p.candidate}: {p.message}", end="",
                  file=sys.stderr, flush=True)
    return show


def _cell_seconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}"


def table_lines(calibration: Calibration, quality: str) -> list[str]:
    """The table for `quality`, one line per candidate; '*' marks the chosen one."""
    rows = [("", "BACKEND", "PRECISION", "UNITS", "S/CHUNK", "WORST STEM", "RESULT")]
    for r in calibration.table(quality):
        rows.append(("*" if r.chosen else "", r.backend, r.precision, r.units,
                     _cell_seconds(r.seconds), r.snr_text, r.reason))
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row[:6], widths, strict=True))
            + "  " + row[6] for row in rows]


def choices_line(calibration: Calibration) -> str:
    picks = ", ".join(f"{q} ({GATES[q]:.0f} dB): {calibration.chosen(q).label}"
                      for q in QUALITIES)
    return f"Chosen per quality: {picks}."


def header_line(calibration: Calibration) -> str:
    k = calibration.key
    return (f"{calibration.model} on {k.get('os')} ({k.get('machine')}, {k.get('cpu')}, "
            f"{k.get('cores')} cores): calibrated {calibration.created} in "
            f"{calibration.seconds:.1f} s")


def _unavailable_line() -> str | None:
    from engine.candidates import backend_kinds

    missing = [f"{k.kind} ({k.unavailable})" for k in backend_kinds() if not k.candidates]
    return f"Not available here: {'; '.join(missing)}." if missing else None


def backend_lines() -> list[str]:
    """`demixer doctor`: the candidates of this machine, and the kinds it lacks."""
    from engine.candidates import machine_candidates

    auto = [c.label for c in machine_candidates()]
    extra = [c.label for c in machine_candidates(include_all=True) if c.label not in auto]
    lines = [f"Backends here (--backend auto picks among them by calibration): "
             f"{', '.join(auto)}" + (f"; only with --all: {', '.join(extra)}" if extra else "")]
    unavailable = _unavailable_line()
    return lines + ([unavailable] if unavailable else [])


def as_json(calibration: Calibration, quality: str) -> dict[str, object]:
    rows = calibration.table(quality)
    return {"model": calibration.model, "quality": quality, "seconds": calibration.seconds,
            "candidates": [r.as_json() for r in rows],
            "chosen": next(r for r in rows if r.chosen).as_json(),
            "choices": {q: calibration.chosen(q).label for q in QUALITIES}}


def run_calibrate(args: argparse.Namespace) -> int:
    from engine.calibrate import calibrate
    from engine.cli.models import download_printer, stage_printer
    from engine.store import load_model, resolve_model

    resolved = resolve_model(args.name, args.repo, progress=download_printer())
    bag = load_model(resolved)
    calibration = calibrate(bag, resolved, include_all=args.all,
                            progress=progress_printer(args.name, first_use=False),
                            convert_progress=stage_printer())
    where = f"stored in {calibration.path}" if calibration.path is not None else \
        "it could not be stored in the data folder (measured again next time)"
    _err(f"Calibrated in {calibration.seconds:.1f} s; {where}.")
    if args.json:
        print(json.dumps(as_json(calibration, args.quality), indent=1))
        return 0
    print(header_line(calibration) + f"; quality {args.quality} "
          f"(worst stem >= {GATES[args.quality]:.0f} dB)")
    print("\n".join(table_lines(calibration, args.quality)))
    unavailable = _unavailable_line()
    if unavailable:
        print(unavailable)
    print(choices_line(calibration))
    return 0


def doctor_lines() -> list[str]:
    """`demixer doctor`'s part: every cached calibration, its default table and choices."""
    found = cached_calibrations()
    if not found:
        return ["Calibrations: none yet (the first separation with --backend auto, or "
                "`demixer models calibrate NAME`, makes one)"]
    lines = ["Calibrations (the fastest backend that passes each quality gate, measured "
             "here):"]
    for calibration in found:
        stale = " - out of date, measured again at next use" if is_stale(calibration) else ""
        lines.append(f"  {header_line(calibration)}{stale}")
        lines += [f"    {line}" for line in table_lines(calibration, "default")]
        lines.append(f"    {choices_line(calibration)}")
    return lines
