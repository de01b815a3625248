"""Where stems go and what is written: demucs's layout `OUT/MODEL/TRACK/STEM.EXT`.

An `OutputPlan` names every file before any separation starts, so an existing stem is reported
at once (unless `overwrite`) instead of after minutes of work. `--two-stems STEM` writes STEM
and `no_STEM` (the sum of the others, as demucs); `--mix NAME=a+b` writes custom sums.
"""

from __future__ import annotations

import glob
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.atomicio import Staged, commit_all, discard_temps
from engine.errors import CancelFlag, DemixerError, OutputExistsError
from engine.stembuffers import StemBuffers
from engine.writers import OutputFormat, io_reason, stage_audio

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


def output_paths(plan: OutputPlan, track: Path, names: list[str],
                 track_name: str | None = None) -> dict[str, Path]:
    """Output name -> file. `track_name` replaces the input's stem in {track} (a batch gives
    `song (2)` to a second input called `song`)."""
    base = plan.root / plan.model_name
    paths = {}
    for name in names:
        rel = plan.template.format(track=track_name or track.stem,
                                   trackext=track.suffix.lstrip("."), stem=name,
                                   ext=plan.fmt.ext)
        paths[name] = base / rel
    if len(set(paths.values())) != len(paths):
        raise DemixerError(f"--filename '{plan.template}' gives the same file to several stems; "
                           "include {stem} in it.")
    return paths


def check_outputs(plan: OutputPlan, track: Path, sources: list[str],
                  track_name: str | None = None) -> dict[str, Path]:
    """The output paths for `track`; raises before any work if one exists already."""
    paths = output_paths(plan, track, list(outputs_for(plan, sources)), track_name)
    if not plan.overwrite:
        for path in paths.values():
            if path.exists():
                raise OutputExistsError(f"{path} exists already; use --overwrite to replace it "
                                        "or -o to write elsewhere.")
    return paths


def write_outputs(plan: OutputPlan, track: Path, stems: StemBuffers, rate_out: int,
                  frames_out: int, cancel: CancelFlag | None = None,
                  track_name: str | None = None) -> list[Path]:
    """Write every output, all or nothing.

    Each file is written whole to a temporary beside its target first; only when all are
    complete are they swapped in (`engine.atomicio.commit_all`). On a failure or cancel at
    any point the old files (with `overwrite`) stay whole, and only files this call created
    are removed, known by identity, so another process's file of the same name is safe."""
    mixes = outputs_for(plan, stems.sources)
    paths = check_outputs(plan, track, stems.sources, track_name)
    for path in paths.values():
        remove_stale_temporaries(path)
    staged: list[Staged] = []
    try:
        for name, parts in mixes.items():
            views: list[Any] = [stems.view(s) for s in parts]  # (C, N) array-likes
            temp = stage_audio(paths[name], views, stems.samplerate, rate_out=rate_out,
                               frames_out=frames_out, fmt=plan.fmt, overwrite=plan.overwrite,
                               cancel=cancel)
            staged.append(Staged.of(paths[name], temp))
        _commit(staged, plan.overwrite)
    finally:
        discard_temps(staged)
    return [item.target for item in staged]


STALE_TEMP_S = 3600.0  # a stem's temporary untouched this long belongs to a crashed writer


def remove_stale_temporaries(target: Path) -> None:
    """Remove `target`'s hidden temporaries (`.NAME.partial-XXXXXXXX`) that a writer killed
    mid-way left behind: untouched for an hour, no live writer still owns them."""
    cutoff = time.time() - STALE_TEMP_S
    try:
        leftovers = list(target.parent.glob(f".{glob.escape(target.name)}.partial-*"))
    except OSError:
        return
    for leftover in leftovers:
        try:
            if leftover.is_file() and leftover.stat().st_mtime < cutoff:
                leftover.unlink()
        except OSError:
            pass


def _commit(staged: list[Staged], overwrite: bool) -> None:
    try:
        commit_all(staged, overwrite)
    except FileExistsError as err:
        raise OutputExistsError(f"{err.filename} appeared while the stems were written; "
                                "use --overwrite to replace it or -o to write elsewhere.") \
            from None
    except OSError as err:
        path = Path(err.filename or staged[0].target)
        raise DemixerError(f"{path} cannot be written ({io_reason(err, path)}); the files "
                           "that were there are unchanged.") from None
