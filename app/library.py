"""The library: finished separations kept on disk, reopened without separating again. Qt-free.

One folder per song under `engine.store.data_dir() / "library"`:
    entry.json   the index entry (title, source file, model, stems, lengths, date)
    stems/       the raw stems (`engine.stembuffers` layout, with its stems.json)
    mix/         the original mix at 44.1 kHz, same layout (the track view's last lane)
    peaks.npz    the waveform peaks of every lane (optional; rebuilt if missing)
An entry is `complete` only once separation finished; incomplete folders (a crash, a quit
mid-separation) are removed at start-up.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from app.track import ORIGINAL, TrackAudio, make_lanes
from engine.stembuffers import StemBuffers, read_track_window
from engine.store import data_dir

ENTRY = "entry.json"
COPY_BLOCK = 1 << 18


@dataclass
class LibraryEntry:
    folder: Path
    title: str
    source: str
    model: str
    two_stems: bool = False
    sources: list[str] = field(default_factory=list)
    frames: int = 0
    samplerate: int = 44100
    source_rate: int = 44100
    source_frames: int = 0
    created: float = field(default_factory=time.time)
    complete: bool = False

    @property
    def id(self) -> str:
        return self.folder.name

    @property
    def stems_dir(self) -> Path:
        return self.folder / "stems"

    @property
    def mix_dir(self) -> Path:
        return self.folder / "mix"

    @property
    def peaks_path(self) -> Path:
        return self.folder / "peaks.npz"

    @property
    def seconds(self) -> float:
        return self.frames / max(1, self.samplerate)

    def save(self) -> None:
        info = asdict(self)
        info.pop("folder")
        tmp = self.folder / (ENTRY + ".tmp")
        tmp.write_text(json.dumps(info, indent=1))
        os.replace(tmp, self.folder / ENTRY)

    @classmethod
    def load(cls, folder: Path) -> LibraryEntry:
        info = json.loads((folder / ENTRY).read_text())
        known = {k: v for k, v in info.items() if k in cls.__dataclass_fields__}
        return cls(folder=folder, **known)

    def open_track(self) -> TrackAudio:
        """The finished song, read-only; raises OSError/ValueError if its files are gone."""
        stems = StemBuffers.open(self.stems_dir)
        mix = StemBuffers.open(self.mix_dir)
        return TrackAudio(self.title, stems, mix, make_lanes(stems.sources, self.two_stems),
                          source_rate=self.source_rate, source_frames=self.source_frames)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:40] or "song"


class Library:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else data_dir() / "library"
        self.root.mkdir(parents=True, exist_ok=True)

    def create(self, source: Path, model: str, two_stems: bool) -> LibraryEntry:
        """A new, incomplete entry folder for a separation about to start."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder = self.root / f"{stamp}-{_slug(source.stem)}-{secrets.token_hex(3)}"
        folder.mkdir(parents=True)
        entry = LibraryEntry(folder=folder, title=source.stem, source=str(source), model=model,
                             two_stems=two_stems)
        entry.save()
        return entry

    def _all(self) -> list[LibraryEntry]:
        found = []
        for folder in sorted(self.root.iterdir()):
            if folder.name.startswith("."):
                continue
            try:
                found.append(LibraryEntry.load(folder))
            except (OSError, ValueError, TypeError):
                continue
        return found

    def entries(self) -> list[LibraryEntry]:
        """Complete entries, newest first."""
        done = [e for e in self._all() if e.complete]
        return sorted(done, key=lambda e: e.created, reverse=True)

    def delete(self, entry: LibraryEntry) -> threading.Thread:
        """Remove the entry: its index at once (so it is no longer listed), its stems on a
        daemon thread (a long song's are gigabytes). Returns that thread."""
        trash = entry.folder.with_name(f".deleted-{entry.folder.name}")
        try:
            os.replace(entry.folder, trash)
        except OSError:
            trash = entry.folder
        thread = threading.Thread(target=shutil.rmtree, args=(trash,),
                                  kwargs={"ignore_errors": True}, daemon=True,
                                  name="demixer-delete")
        thread.start()
        return thread

    def remove_incomplete(self, keep: Collection[Path] = ()) -> None:
        """Delete folders of separations that never finished (none may be running)."""
        for folder in self.root.iterdir():
            if folder in keep or not folder.is_dir():
                continue
            if folder.name.startswith(".deleted-"):  # a delete cut short by a quit
                shutil.rmtree(folder, ignore_errors=True)
                continue
            try:
                complete = LibraryEntry.load(folder).complete
            except (OSError, ValueError, TypeError):
                complete = False
            if not complete:
                shutil.rmtree(folder, ignore_errors=True)

    def replace_older(self, entry: LibraryEntry) -> None:
        """Drop earlier separations of the same file with the same model."""
        for other in self._all():
            if (other.folder != entry.folder and other.source == entry.source
                    and other.model == entry.model):
                self.delete(other)


def copy_mix(audio: np.ndarray, folder: Path, samplerate: int) -> None:
    """Keep the decoded original mix ((C, N) float32, e.g. the job's memmap) in `folder`."""
    channels, frames = audio.shape
    buffers = StemBuffers(folder, [ORIGINAL], channels, frames, samplerate)
    try:
        for start in range(0, frames, COPY_BLOCK):
            block = read_track_window(audio, start, min(COPY_BLOCK, frames - start))
            buffers.write(start, block[None])
        buffers.ready_frames = frames
        buffers.save_index(complete=True)
    finally:
        buffers.close()
