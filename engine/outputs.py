"""Where stems go and what is written: demucs's layout `OUT/MODEL/TRACK/STEM.EXT`.

An `OutputPlan` names every file before any separation starts, so an existing stem is reported
at once (unless `overwrite`) instead of after minutes of work. `--two-stems STEM` writes STEM
and `no_STEM` (the sum of the others, as demucs); `--mix NAME=a+b` writes custom sums.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import Cancelled, DemixerError, OutputExistsError
from engine.stembuffers import StemBuffers
from engine.writers import OutputFormat, write_audio

DEFAULT_TEMPLATE = "{track}/{stem}.{ext}"


@dataclass(frozen=True)
class OutputPlan:
    root: Path = Path("separated")
    model_name: str = "htdemucs_6s"
    template: str = DEFAULT_TEMPLATE
    fmt: OutputFormat = field(default_factory=OutputFormat)
    two_stems: str | None = None
    mixes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    stems: tuple[str, ...] | None = None  # a subset of the sources; None = all
    keep_model_rate: bool = False
    overwrite: bool = False


def parse_mix(text: str) -> tuple[str, tuple[str, ...]]:
    """'instrumental=drums+bass+other' -> ('instrumental', ('drums', 'bass', 'other'))."""
    name, _, stems = text.partition("=")
    parts = tuple(s.strip() for s in stems.split("+") if s.strip())
    if not name.strip() or not parts:
        raise DemixerError(f"--mix '{text}' should look like NAME=stem+stem, "
                           "e.g. instrumental=drums+bass+other.")
    return name.strip(), parts


def outputs_for(plan: OutputPlan, sources: list[str]) -> dict[str, tuple[str, ...]]:
    """Output name -> the sources summed into it."""
    unknown = {s for _, parts in plan.mixes for s in parts} | {plan.two_stems} | set(
        plan.stems or ())
    unknown -= set(sources) | {None}
    if unknown:
        raise DemixerError(f"Unknown stem {', '.join(sorted(map(str, unknown)))}; this model "
                           f"has {', '.join(sources)}.")
    if plan.two_stems:
        rest = tuple(s for s in sources if s != plan.two_stems)
        result = {plan.two_stems: (plan.two_stems,), f"no_{plan.two_stems}": rest}
    else:
        result = {s: (s,) for s in (plan.stems or sources)}
    result.update(dict(plan.mixes))
    return result


def output_paths(plan: OutputPlan, track: Path, names: list[str]) -> dict[str, Path]:
    base = plan.root / plan.model_name
    paths = {}
    for name in names:
        rel = plan.template.format(track=track.stem, trackext=track.suffix.lstrip("."),
                                   stem=name, ext=plan.fmt.ext)
        paths[name] = base / rel
    if len(set(paths.values())) != len(paths):
        raise DemixerError(f"--filename '{plan.template}' gives the same file to several stems; "
                           "include {stem} in it.")
    return paths


def check_outputs(plan: OutputPlan, track: Path, sources: list[str]) -> dict[str, Path]:
    """The output paths for `track`; raises before any work if one exists already."""
    paths = output_paths(plan, track, list(outputs_for(plan, sources)))
    if not plan.overwrite:
        for path in paths.values():
            if path.exists():
                raise OutputExistsError(f"{path} exists already; use --overwrite to replace it "
                                        "or -o to write elsewhere.")
    return paths


def write_outputs(plan: OutputPlan, track: Path, stems: StemBuffers, rate_out: int,
                  frames_out: int, cancel: threading.Event | None = None) -> list[Path]:
    """Write every output; on failure or cancel, remove what this call wrote."""
    mixes = outputs_for(plan, stems.sources)
    paths = check_outputs(plan, track, stems.sources)
    written: list[Path] = []
    try:
        for name, parts in mixes.items():
            views: list[Any] = [stems.view(s) for s in parts]  # (C, N) array-likes
            written.append(write_audio(paths[name], views, stems.samplerate, rate_out=rate_out,
                                       frames_out=frames_out, fmt=plan.fmt,
                                       overwrite=plan.overwrite, cancel=cancel))
    except (Cancelled, DemixerError, OSError):
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written
