"""The library: finished separations kept on disk, reopened without separating again. Qt-free.

One folder per song under `engine.store.data_dir() / "library"`:
    entry.json   the index entry (title, source file, model, stems, lengths, date, and the
                 mix the listener left: app.songmix)
    stems/       the raw stems (`engine.stembuffers` layout, with its stems.json)
    mix/         the original mix at 44.1 kHz, same layout (the track view's last lane)
    peaks.npz    the waveform peaks of every lane (optional; rebuilt if missing)
    running.lock held (flock) by the app whose separation writes into the folder, and
    worker.lock  by its worker process (a worker outlives a killed app by a chunk or so)
An entry is `complete` once separation finished. What the start-up `tidy()` does with the
rest (finished stems are never deleted without the person saying so):
  - the temporary folders of jobs that are gone (`engine.partial.clean_stale`): removed;
  - an incomplete entry whose stems are complete (a crash between the two writes): completed;
  - an incomplete entry whose stems hold a resumable checkpoint: listed as interrupted;
  - an incomplete entry without one (nothing can be resumed): removed;
  - a missing or damaged entry.json over complete stems: rebuilt from the stems' index;
  - any other damaged folder: listed as damaged; the person deletes or keeps it;
  - a folder locked by a running separation (another process): not touched at all.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.filelock import FileLock, held_elsewhere
from app.track import ORIGINAL, TrackAudio, make_lanes
from engine.atomicio import write_text_atomic
from engine.partial import clean_stale, inspect
from engine.stembuffers import INDEX, StemBuffers, read_track_window
from engine.store import data_dir

ENTRY = "entry.json"
LOCK = "running.lock"  # held by the app whose separation writes into the folder
WORKER_LOCK = "worker.lock"  # held by its worker process while the job runs
NEW_PREFIX = ".new-"  # a folder being created (renamed into place with its entry.json)
DELETED_PREFIX = ".deleted-"  # a folder being deleted (its stems go on a daemon thread)
COPY_BLOCK = 1 << 18
REQUIRED = ("title", "source", "model")


class DamagedEntry(ValueError):
    """An entry.json that cannot be read; the message says why, in a few words."""


@dataclass
class LibraryEntry:
    folder: Path
    title: str
    source: str  # the song's absolute path when it was separated
    model: str
    two_stems: bool = False
    sources: list[str] = field(default_factory=list)
    frames: int = 0
    samplerate: int = 44100
    source_rate: int = 44100
    source_frames: int = 0
    created: float = field(default_factory=time.time)
    complete: bool = False
    source_size: int = -1  # the song file's size and mtime: the same song, unchanged
    source_mtime_ns: int = 0
    backend: str = "auto"  # how it separates (ModelKey): a resume must use the same
    compute_units: str = "all"
    shifts: int = 1
    segment: float | None = None
    song_mix: dict[str, Any] = field(default_factory=dict)  # app.songmix.SongMix.to_json()

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
        """Replace entry.json atomically and durably (a crash leaves the old or the new)."""
        info = asdict(self)
        info.pop("folder")
        write_text_atomic(self.folder / ENTRY, json.dumps(info, indent=1))

    @classmethod
    def load(cls, folder: Path) -> LibraryEntry:
        """Read `folder`'s entry.json; raises DamagedEntry (why) if it cannot be used."""
        try:
            raw = (folder / ENTRY).read_bytes()
        except FileNotFoundError:
            raise DamagedEntry(f"{ENTRY} is missing") from None
        except OSError as err:
            raise DamagedEntry(f"{ENTRY} cannot be read ({err.strerror or err})") from None
        try:
            info = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            what = "empty" if not raw.strip() else "truncated or not valid JSON"
            raise DamagedEntry(f"{ENTRY} is {what}") from None
        if not isinstance(info, dict):
            raise DamagedEntry(f"{ENTRY} holds {type(info).__name__}, not an entry")
        return cls(folder=folder, **_checked_fields(info))

    def open_track(self) -> TrackAudio:
        """The finished song, read-only; raises OSError/ValueError if its files are gone."""
        stems = StemBuffers.open(self.stems_dir)
        mix = StemBuffers.open(self.mix_dir)
        return TrackAudio(self.title, stems, mix, make_lanes(stems.sources, self.two_stems),
                          source_rate=self.source_rate, source_frames=self.source_frames)

    def same_source(self, path: Path) -> bool:
        """Whether `path` (absolute) is the file this entry separated, unchanged since."""
        if self.source != str(path):
            return False
        try:
            st = path.stat()
        except OSError:
            return False
        return st.st_size == self.source_size and st.st_mtime_ns == self.source_mtime_ns


def _checked_fields(info: dict[str, Any]) -> dict[str, Any]:
    """The known fields of an entry.json, each of the right type (DamagedEntry if not)."""
    fields = LibraryEntry.__dataclass_fields__
    out: dict[str, Any] = {}
    for name in REQUIRED:
        if not isinstance(info.get(name), str):
            raise DamagedEntry(f"{ENTRY} has no {name}")
    for name, value in info.items():
        if name == "folder" or name not in fields:
            continue
        if not _fits(fields[name].type, value):
            raise DamagedEntry(f"{ENTRY} has a bad {name} ({value!r:.40})")
        out[name] = list(value) if isinstance(value, list) else value
    return out


def _fits(kind: object, value: object) -> bool:
    """`value` (from JSON) against a field's annotation (a string: postponed annotations)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return number and math.isfinite(value)  # type: ignore[arg-type]
    if kind == "float | None":
        return value is None or (number and math.isfinite(value))  # type: ignore[arg-type]
    if kind == "dict[str, Any]":
        return isinstance(value, dict)
    if kind == "list[str]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return False


@dataclass(frozen=True)
class Damaged:
    """A library folder whose entry cannot be read or rebuilt: the person decides."""
    folder: Path
    reason: str


@dataclass
class Tidied:
    """What `Library.tidy()` found at start-up."""
    interrupted: list[LibraryEntry] = field(default_factory=list)  # resumable, oldest first
    rebuilt: list[LibraryEntry] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    damaged: list[Damaged] = field(default_factory=list)


def stems_index(stems_dir: Path) -> dict[str, Any] | None:
    """A stems folder's stems.json as a dict, or None if missing or unreadable."""
    try:
        info = json.loads((stems_dir / INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _stem_files_whole(stems_dir: Path, info: dict[str, Any]) -> bool:
    """Every stem file of the index is there with the size the index says."""
    try:
        size = int(info["frames"]) * int(info["channels"]) * 4
        names = [str(s) for s in info["sources"]]
    except (KeyError, TypeError, ValueError):
        return False
    for name in names:
        try:
            if (stems_dir / f"{name}.f32").stat().st_size != size:
                return False
        except OSError:
            return False
    return bool(names)


def finished_stems(stems_dir: Path) -> dict[str, Any] | None:
    """The index of complete, whole stems in `stems_dir`, else None."""
    info = stems_index(stems_dir)
    if info is None or info.get("complete") is not True:
        return None
    return info if _stem_files_whole(stems_dir, info) else None


def resumable_fraction(stems_dir: Path) -> float | None:
    """How far an interrupted run's checkpoint got (0..1), or None if it cannot resume.
    A checkpoint whose song file is not there now is kept (a disk that is not plugged in);
    one whose song changed is not (`engine.partial.inspect`)."""
    state = inspect(stems_dir)
    if state.complete or state.frames == 0:
        return None
    if state.resumable or (state.source is not None and not state.source.exists()):
        return state.fraction
    return None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:40] or "song"


def in_use(folder: Path) -> bool:
    """Whether a separation (of another app, or another window) writes into `folder` now,
    or a worker is still finishing there."""
    return held_elsewhere(folder / LOCK) or held_elsewhere(folder / WORKER_LOCK)


def app_running_in(folder: Path) -> bool:
    """Whether a live app holds `folder` (not just a worker that outlived its app)."""
    return held_elsewhere(folder / LOCK)


class Library:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else data_dir() / "library"
        self.root.mkdir(parents=True, exist_ok=True)
        self._locks: dict[Path, FileLock] = {}

    def create(self, source: Path, model: str, two_stems: bool, **key: Any) -> LibraryEntry:
        """A new, incomplete entry folder for a separation about to start, locked for it
        until `release(entry)`. `key`: the rest of the ModelKey (backend, shifts...)."""
        source = Path(source)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"{stamp}-{_slug(source.stem)}-{secrets.token_hex(3)}"
        staging = self.root / f"{NEW_PREFIX}{name}"
        staging.mkdir(parents=True)
        entry = LibraryEntry(folder=staging, title=source.stem, source=str(source),
                             model=model, two_stems=two_stems, **key)
        try:
            st = source.stat()
            entry.source_size, entry.source_mtime_ns = st.st_size, st.st_mtime_ns
        except OSError:
            pass  # the separation will say what is wrong with the file
        entry.save()
        lock = FileLock(staging / LOCK)
        os.replace(staging, self.root / name)  # listed only with its entry.json in place
        entry.folder = self.root / name
        self._locks[entry.folder] = lock
        return entry

    def lock(self, entry: LibraryEntry) -> None:
        """Hold `entry`'s folder for a separation (a resume); BlockingIOError if another
        process or window holds it."""
        if entry.folder not in self._locks:
            self._locks[entry.folder] = FileLock(entry.folder / LOCK)

    def release(self, entry: LibraryEntry) -> None:
        """The separation into `entry` has ended: other processes may tidy the folder."""
        lock = self._locks.pop(entry.folder, None)
        if lock is not None:
            lock.release()

    def _folders(self) -> list[Path]:
        return [f for f in sorted(self.root.iterdir())
                if f.is_dir() and not f.name.startswith(".")]

    def _all(self) -> list[LibraryEntry]:
        return self.listing()[0]

    def listing(self) -> tuple[list[LibraryEntry], list[Damaged]]:
        """Every readable entry (complete or not), and the folders whose entry is damaged
        (not those a separation is writing into)."""
        found, damaged = [], []
        for folder in self._folders():
            try:
                found.append(LibraryEntry.load(folder))
            except DamagedEntry as err:
                if not in_use(folder):
                    damaged.append(Damaged(folder, str(err)))
        return found, damaged

    def entries(self) -> list[LibraryEntry]:
        """Complete entries, newest first."""
        return complete_newest_first(self._all())

    def find(self, source: Path, model: str, two_stems: bool) -> LibraryEntry | None:
        """The newest complete separation of this unchanged file with this model."""
        return next((e for e in self.entries() if e.model == model
                     and e.two_stems == two_stems and e.same_source(source)), None)

    def delete(self, entry: LibraryEntry) -> threading.Thread:
        """Remove the entry: its index at once (so it is no longer listed), its stems on a
        daemon thread (a long song's are gigabytes). Returns that thread."""
        return self.delete_folder(entry.folder)

    def delete_folder(self, folder: Path) -> threading.Thread:
        lock = self._locks.pop(folder, None)
        if lock is not None:
            lock.release()
        trash = folder.with_name(f"{DELETED_PREFIX}{folder.name}")
        try:
            os.replace(folder, trash)
        except OSError:
            trash = folder
        thread = threading.Thread(target=shutil.rmtree, args=(trash,),
                                  kwargs={"ignore_errors": True}, daemon=True,
                                  name="demixer-delete")
        thread.start()
        return thread

    def tidy(self) -> Tidied:
        """At start-up: finish, rebuild, list or remove what earlier runs left (module
        docstring). Folders another process is separating into are left alone."""
        found = Tidied()
        try:  # the decoded tracks of jobs a crash or kill stopped (hundreds of MB each)
            found.removed += clean_stale()
        except OSError:
            pass
        for folder in sorted(self.root.iterdir()):
            # a worker whose app died may still be cancelling into its folder: that is an
            # interrupted separation all the same (a resume waits for the worker's lock)
            if not folder.is_dir() or app_running_in(folder):
                continue
            if folder.name.startswith((DELETED_PREFIX, NEW_PREFIX)):
                # a delete cut short, or a folder never given its entry: nothing to keep
                shutil.rmtree(folder, ignore_errors=True)
                found.removed.append(folder)
            elif not folder.name.startswith("."):
                self._tidy_one(folder, found)
        found.interrupted.sort(key=lambda e: e.created)
        return found

    def _tidy_one(self, folder: Path, found: Tidied) -> None:
        try:
            entry: LibraryEntry | None = LibraryEntry.load(folder)
        except DamagedEntry as err:
            entry = self._rebuild(folder)
            if entry is None:
                found.damaged.append(Damaged(folder, str(err)))
            else:
                found.rebuilt.append(entry)
            return
        assert entry is not None
        if entry.complete:
            return
        if finished_stems(entry.stems_dir) is not None and self._complete_from_stems(entry):
            found.rebuilt.append(entry)
        elif resumable_fraction(entry.stems_dir) is not None:
            found.interrupted.append(entry)
        elif not in_use(folder):  # (a worker still stopping there: next time)
            shutil.rmtree(folder, ignore_errors=True)
            found.removed.append(folder)

    def _complete_from_stems(self, entry: LibraryEntry) -> bool:
        """Mark `entry` complete from its finished stems (and mix); False if they don't fit."""
        stems, mix = finished_stems(entry.stems_dir), finished_stems(entry.mix_dir)
        if stems is None or mix is None:
            return False
        try:
            entry.sources = [str(s) for s in stems["sources"]]
            entry.frames, entry.samplerate = int(stems["frames"]), int(stems["samplerate"])
            entry.source_rate = int(mix.get("source_rate", entry.samplerate))
            entry.source_frames = int(mix.get("source_frames", entry.frames))
        except (KeyError, TypeError, ValueError):
            return False
        entry.complete = True
        entry.save()
        return True

    def _rebuild(self, folder: Path) -> LibraryEntry | None:
        """A new entry.json from complete stems and mix (their indexes name the source, the
        model and the rates); None if the stems are not finished."""
        stems, mix = finished_stems(folder / "stems"), finished_stems(folder / "mix")
        if stems is None or mix is None:
            return None
        source = str(stems.get("source") or mix.get("source") or folder.name)
        model = str(mix.get("model") or ("htdemucs_6s" if len(stems["sources"]) == 6
                                         else "htdemucs"))
        entry = LibraryEntry(folder=folder, title=Path(source).stem or folder.name,
                             source=source, model=model, created=_created(folder))
        try:
            return entry if self._complete_from_stems(entry) else None
        except OSError:
            return None

    def replace_older(self, entry: LibraryEntry) -> None:
        """Drop earlier separations of the same file with the same model."""
        for other in self._all():
            if (other.folder != entry.folder and other.source == entry.source
                    and other.model == entry.model and other.complete
                    and not in_use(other.folder)):
                self.delete(other)


def complete_newest_first(entries: list[LibraryEntry]) -> list[LibraryEntry]:
    return sorted((e for e in entries if e.complete), key=lambda e: e.created, reverse=True)


def _created(folder: Path) -> float:
    try:
        return (folder / "stems" / INDEX).stat().st_mtime
    except OSError:
        return time.time()


def copy_mix(audio: np.ndarray, folder: Path, samplerate: int,
             about: dict[str, Any] | None = None) -> None:
    """Keep the decoded original mix ((C, N) float32, e.g. the job's memmap) in `folder`.
    `about` (source, model, source_rate, source_frames) goes into its index: with the stems'
    own index, enough to rebuild a lost entry.json."""
    channels, frames = audio.shape
    buffers = StemBuffers(folder, [ORIGINAL], channels, frames, samplerate)
    try:
        for start in range(0, frames, COPY_BLOCK):
            block = read_track_window(audio, start, min(COPY_BLOCK, frames - start))
            buffers.write(start, block[None])
        buffers.ready_frames = frames
        buffers.save_index(complete=True, extra=about)
    finally:
        buffers.close()
