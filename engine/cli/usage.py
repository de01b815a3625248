"""`demixer separate`'s usage checks: every mistake is one sentence and exit 2, before any work.

`check_usage` runs before the model loads (in well under a second): the flags' values, the
--filename template, the --mix and --two-stems names against the model's stems (known from
the catalogue without loading anything), the output folder. For a model from a local repo
(`--repo`, `$DEMIXER_MODEL_REPO`) the stems are only known once it is loaded:
`check_after_load` repeats the stem checks then, still before any file is touched.
"""

from __future__ import annotations

import argparse
import math
import os
import string
from pathlib import Path

from engine.catalogue import get_entry, model_names
from engine.errors import DemixerError, UsageError
from engine.outputs import OutputPlan, outputs_for
from engine.separator import SeparationOptions, Separator

TEMPLATE_FIELDS = ("track", "trackext", "stem", "ext")
MAX_OVERLAP = 0.99  # beyond, chunks step by a few hundred samples: hours for one song
MODEL_SEGMENT_S = 7.8  # HTDemucs's training length (every catalogue model)


def check_usage(args: argparse.Namespace, name: str, options: SeparationOptions,
                plan: OutputPlan) -> None:
    """Raise UsageError (one sentence) for anything that cannot work."""
    from engine.backends import check_device, check_precision, resolve_backend_kind
    from engine.store import ENV_MODEL_REPO

    local_repo = args.repo is not None or bool(os.environ.get(ENV_MODEL_REPO))
    if not local_repo and name not in model_names():
        raise UsageError(f"Unknown model '{name}'; choose one of: {', '.join(model_names())}.")
    _check_numbers(args, options)
    check_template(plan.template)
    try:
        kind = resolve_backend_kind(args.backend)
        if kind == "torch":
            check_device(args.device)
        check_precision(kind, args.precision)
    except DemixerError as err:
        raise UsageError(str(err)) from None
    _check_out(args.out)
    if not local_repo:
        entry = get_entry(name)
        check_stems(plan, entry.sources)
        _check_offsets(options, len(entry.checkpoints))


def check_after_load(plan: OutputPlan, separator: Separator) -> None:
    """The stem checks against the loaded model's real stems (a local repo's model)."""
    check_stems(plan, separator.sources)
    _check_offsets(separator.options, len(separator.backends))


def _check_numbers(args: argparse.Namespace, options: SeparationOptions) -> None:
    if options.shifts < 0:
        raise UsageError(f"--shifts must be 0 or more, not {options.shifts}.")
    if not math.isfinite(options.overlap) or not 0 <= options.overlap <= MAX_OVERLAP:
        raise UsageError(f"--overlap must be a number from 0 to {MAX_OVERLAP}, "
                         f"not {options.overlap}.")
    seg = options.segment
    if seg is not None and (not math.isfinite(seg) or not 0.1 <= seg <= MODEL_SEGMENT_S):
        raise UsageError(f"--segment must be between 0.1 and {MODEL_SEGMENT_S} seconds, "
                         f"not {seg}.")
    cores = os.cpu_count() or 1
    if not 0 <= args.jobs <= cores:
        raise UsageError(f"-j/--jobs must be from 0 (all cores) to {cores} (this machine's "
                         f"cores), not {args.jobs}.")


def check_template(template: str) -> None:
    """--filename: known fields only, balanced braces, {stem} present."""
    try:
        fields = [f for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
        template.format(**{f: "x" for f in TEMPLATE_FIELDS})
    except (ValueError, IndexError, KeyError, AttributeError):
        raise UsageError(f"--filename '{template}' is not a valid template (braces must pair "
                         "up, e.g. {track}/{stem}.{ext}).") from None
    unknown = [f for f in fields if f not in TEMPLATE_FIELDS]
    if unknown:
        raise UsageError(f"--filename '{template}' has an unknown field {{{unknown[0]}}}; "
                         f"use {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}.")
    if "stem" not in fields:
        raise UsageError(f"--filename '{template}' gives the same file to every stem; "
                         "include {stem} in it.")
    if Path(template.format(track="t", trackext="e", stem="s", ext="x")).is_absolute():
        raise UsageError(f"--filename '{template}' must be relative to the output folder.")


def check_stems(plan: OutputPlan, sources: list[str]) -> None:
    """--two-stems and --mix name real stems; a mix name is new and given once."""
    names = [n for n, _ in plan.mixes]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UsageError(f"--mix {repeated[0]} is given more than once; give each mix its "
                         "own name.")
    try:
        plain = outputs_for(OutputPlan(two_stems=plan.two_stems, stems=plan.stems), sources)
        outputs_for(plan, sources)
    except DemixerError as err:
        raise UsageError(str(err)) from None
    clash = [n for n in names if n in plain or n in sources]
    if clash:
        raise UsageError(f"--mix {clash[0]}=... has the name of a stem; the mix would replace "
                         f"{clash[0]}.{plan.fmt.ext}, so give it another name.")


def _check_offsets(options: SeparationOptions, members: int) -> None:
    offsets = options.shift_offsets
    if offsets is not None and len(offsets) != options.shifts * members:
        raise UsageError(f"--shift-offsets needs {options.shifts * members} values "
                         f"(--shifts {options.shifts} x {members} models), "
                         f"not {len(offsets)}.")
    if offsets is not None and any(not 0 <= o <= 22050 for o in offsets):
        raise UsageError("--shift-offsets must each be from 0 to 22050 samples (0.5 s).")


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out} is a file, not a folder; give a folder for the stems.")
    existing = next((p for p in [out, *out.parents] if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UsageError(f"-o {out} cannot be made: {existing} is a file.")
