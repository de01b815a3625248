"""Test helpers: finished songs in the library and growing tracks, made without separating."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from app.export import ExportDialog
from app.library import Library, LibraryEntry, copy_mix
from app.track import TrackAudio, make_lanes
from engine.stembuffers import StemBuffers

RATE = 44100
SOURCES = ("drums", "bass", "other", "vocals")


def lane_audio(frames: int, seed: int) -> np.ndarray:
    """A quiet, distinct (2, frames) float32 signal (peaks well below 1 even when summed)."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / RATE
    tone = np.sin(2 * np.pi * (110 + 50 * seed) * t)[None] * np.array([[1.0], [0.7]])
    return (0.1 * tone + 0.02 * rng.standard_normal((2, frames))).astype(np.float32)


def stems_audio(frames: int, sources: tuple[str, ...] = SOURCES) -> dict[str, np.ndarray]:
    return {s: lane_audio(frames, i + 1) for i, s in enumerate(sources)}


def write_stems(folder: Path, stems: dict[str, np.ndarray], ready: int | None = None,
                source: str | None = None) -> StemBuffers:
    """Stems as a separation writes them: complete (with the job's index, naming `source`)
    unless `ready` says how far they got."""
    frames = next(iter(stems.values())).shape[1]
    buffers = StemBuffers(folder, list(stems), 2, frames, RATE)
    buffers.write(0, np.stack(list(stems.values())))
    buffers.ready_frames = frames if ready is None else ready
    if ready is None:
        buffers.save_index(complete=True, extra={"source": source} if source else None)
    return buffers


def make_entry(library: Library, title: str, stems: dict[str, np.ndarray],
               two_stems: bool = False) -> LibraryEntry:
    """A complete library entry, as a finished separation leaves it."""
    entry = library.create(Path(f"/music/{title}.wav"), "htdemucs", two_stems)
    write_stems(entry.stems_dir, stems, source=entry.source).close()
    mix = np.sum(list(stems.values()), axis=0).astype(np.float32)
    frames = mix.shape[1]
    copy_mix(mix, entry.mix_dir, RATE, dict(source=entry.source, model=entry.model,
                                            source_rate=RATE, source_frames=frames))
    entry.title = title
    entry.sources = list(stems)
    entry.frames = entry.source_frames = frames
    entry.complete = True
    entry.save()
    library.release(entry)
    return entry


def growing_track(folder: Path, stems: dict[str, np.ndarray], ready: int,
                  two_stems: bool = False) -> tuple[TrackAudio, SimpleNamespace]:
    """A TrackAudio whose stems are final below `progress.ready_frames` (tests raise it)."""
    write_stems(folder / "stems", stems, ready=ready).close()
    mix = np.sum(list(stems.values()), axis=0).astype(np.float32)
    copy_mix(mix, folder / "mix", RATE)
    frames = mix.shape[1]
    reader = StemBuffers(folder / "stems", list(stems), 2, frames, RATE, create=False)
    progress = SimpleNamespace(ready_frames=ready)
    track = TrackAudio("growing", reader, StemBuffers.open(folder / "mix"),
                       make_lanes(list(stems), two_stems), progress=progress)
    return track, progress


def run_export(window: Any, monkeypatch: Any, qtbot: Any,
               choose: Callable[[ExportDialog], None]) -> list[Path]:
    """Run File ▸ Export with the dialog answered by `choose(dialog)`; the written files."""
    def answer(dialog: ExportDialog) -> int:
        choose(dialog)
        return ExportDialog.DialogCode.Accepted

    monkeypatch.setattr(ExportDialog, "exec", answer)
    with qtbot.waitSignal(window.exporter.finished, timeout=30000) as finished:
        window.export_action.trigger()
    return finished.args[0]
