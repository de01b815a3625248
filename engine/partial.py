"""Where interrupted separations wait to be resumed, and what is removed at the next start.

A command-line run keeps its growing stems in `data_subdir("partial")/<key>/stems/` (the
app keeps them in its library folder instead) and its decoded track in a `work/` folder
beside them. The key is a digest of what decides the result: the input (absolute path, size,
mtime), the model and backends (`Separator.identity`), the separation options and the output
folder; rerunning the same command finds the folder and resumes it (`engine.job`).

A process holds an advisory lock (`flock`) on every folder it works in; the kernel drops it
when the process dies in any way (kill -9 included), so a folder whose lock is free belongs to
nobody. `clean_stale()` runs at the start of every `demixer separate` and removes, among
unlocked folders: work folders (decoded tracks: cheap to redo), runs with nothing to resume
(no checkpoint yet), runs whose input is gone or changed, and runs untouched for
`MAX_AGE_DAYS` days. Starting a run also removes other unlocked runs of the same input (its
options or model changed: they cannot be resumed by this command).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import DemixerError
from engine.intervals import Intervals
from engine.stembuffers import final_of, read_index

PARTIAL = "partial"
WORK = "work"
LOCK = ".lock"
MAX_AGE_DAYS = 7


def source_identity(path: Path) -> dict[str, Any]:
    """What identifies an input file's bytes cheaply: absolute path, size, mtime."""
    path = Path(path).absolute()
    try:
        st = path.stat()
        size, mtime = st.st_size, st.st_mtime_ns
    except OSError:
        size, mtime = -1, -1
    return {"path": str(path), "size": size, "mtime_ns": mtime}


def digest(value: Any) -> str:
    """A stable SHA-256 of a JSON-able value (keys sorted)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- locks -------------------------------------------------------------------------------


class FolderLock:
    """An exclusive advisory lock on `folder/.lock`, held until `release()` or process death."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._fd: int | None = None

    def acquire(self) -> bool:
        """True if this process now holds the lock; False if another process does."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd):
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":  # pragma: no cover - Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def is_locked(folder: Path) -> bool:
    """True if a live process holds `folder`'s lock (tested by taking it for a moment)."""
    if not (Path(folder) / LOCK).exists():
        return False
    probe = FolderLock(folder)
    if probe.acquire():
        probe.release()
        return False
    return True


# --- folders -----------------------------------------------------------------------------


def _data_folder(name: str) -> Path:
    from engine.store import data_subdir

    return data_subdir(name)


def new_workdir() -> tuple[Path, FolderLock]:
    """A fresh, locked folder for a job's temporary files (removed by its job, or by
    `clean_stale` once its process is gone)."""
    folder = _data_folder(WORK) / f"{os.getpid()}-{secrets.token_hex(4)}"
    lock = FolderLock(folder)
    lock.acquire()
    return folder, lock


@dataclass
class PartialRun:
    """A command-line run's resumable folder, locked by this process while it is open."""

    folder: Path
    lock: FolderLock

    @property
    def stems_dir(self) -> Path:
        return self.folder / "stems"

    @property
    def work_dir(self) -> Path:
        return self.folder / WORK

    def close(self, remove: bool) -> None:
        """Release the lock; `remove` deletes the folder (done, or nothing to resume)."""
        shutil.rmtree(self.work_dir, ignore_errors=True)
        if remove:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.lock.release()


def open_run(key: dict[str, Any], source: Path) -> PartialRun:
    """The locked run folder for `key` (what `digest` is taken of), created if new.

    Other unlocked runs of the same input are removed first: they were made with other
    options, so this command cannot resume them. Raises DemixerError if another process is
    separating the same input with the same settings right now."""
    root = _data_folder(PARTIAL)
    folder = root / digest(key)[:24]
    lock = FolderLock(folder)
    if not lock.acquire():
        raise DemixerError(f"{source}: another demixer process is separating this file with "
                           "the same settings right now; wait for it to finish.")
    try:
        _remove_other_runs_of(root, folder, source_identity(source)["path"])
        shutil.rmtree(folder / WORK, ignore_errors=True)  # a decoded track: redone
    except BaseException:
        lock.release()
        raise
    return PartialRun(folder, lock)


def _remove_other_runs_of(root: Path, keep: Path, source: str) -> None:
    for folder in _children(root):
        if folder == keep or is_locked(folder):
            continue
        info = read_index(folder / "stems")
        record = (info or {}).get("resume") or {}
        if (record.get("source") or {}).get("path") == source:
            shutil.rmtree(folder, ignore_errors=True)


def _children(root: Path) -> list[Path]:
    try:
        return sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:
        return []


# --- what can be resumed -----------------------------------------------------------------


@dataclass(frozen=True)
class PartialState:
    """What a stems folder holds: `resumable` and how much (`fraction`, 0..1), or why not.
    `ready_frames` counts the final frames (all of `final`, which a seek-first run may have
    finished out of order)."""

    folder: Path
    resumable: bool
    complete: bool = False
    ready_frames: int = 0
    frames: int = 0
    source: Path | None = None
    reason: str = ""
    final: Intervals = Intervals()

    @property
    def fraction(self) -> float:
        return self.ready_frames / self.frames if self.frames else 0.0


def inspect(folder: Path, fingerprint: str | None = None) -> PartialState:
    """Whether the stems in `folder` can be resumed (or are complete), and at what fraction.

    With `fingerprint` (`SeparationJob.fingerprint()`), also whether they were made from the
    same input with the same model and options, i.e. whether that job would resume them."""
    folder = Path(folder)
    info = read_index(folder)
    if info is None:
        return PartialState(folder, False, reason="no readable stems.json")
    record = info.get("resume")
    if not isinstance(record, dict):
        return PartialState(folder, False, reason="not made by a resumable run")
    try:
        frames, final = int(info["frames"]), final_of(info)
        ready = final.total
        expected = frames * int(info["channels"]) * 4
        sizes_ok = all((folder / f"{s}.f32").is_file()
                       and (folder / f"{s}.f32").stat().st_size == expected
                       for s in info["sources"])
        source = Path(record["source"]["path"])
    except (KeyError, TypeError, ValueError, OSError):
        return PartialState(folder, False, reason="a damaged stems.json")
    complete = bool(info.get("complete")) and ready == frames
    if not sizes_ok:
        return PartialState(folder, False, reason="stem files missing or of the wrong size")
    if ready <= 0:
        return PartialState(folder, False, False, 0, frames, source, "nothing finished yet")
    if source_identity(source) != record["source"]:
        return PartialState(folder, False, complete, ready, frames, source,
                            "the input file changed or is gone", final)
    if fingerprint is not None and record.get("fingerprint") != fingerprint:
        return PartialState(folder, False, complete, ready, frames, source,
                            "made with another model or other options", final)
    return PartialState(folder, True, complete, ready, frames, source, final=final)


# --- clean-up ----------------------------------------------------------------------------


def clean_stale(max_age_days: float = MAX_AGE_DAYS) -> list[Path]:
    """Remove what no one can resume (see module docstring); returns the folders removed.
    Never touches a folder another live process holds."""
    removed = []
    for folder in _children(_data_folder(WORK)):
        if not is_locked(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    cutoff = time.time() - max_age_days * 86400
    for folder in _children(_data_folder(PARTIAL)):
        if is_locked(folder):
            continue
        state = inspect(folder / "stems")
        if not state.resumable or _mtime(folder / "stems") < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        else:
            shutil.rmtree(folder / WORK, ignore_errors=True)
    return removed


def _mtime(folder: Path) -> float:
    try:
        return (folder / "stems.json").stat().st_mtime
    except OSError:
        return 0.0
