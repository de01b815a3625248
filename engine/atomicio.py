"""Atomic, durable file writes: the one home for "write a temporary, fsync, rename into place".

A reader (another thread, another process, the next start after a power loss) sees either the
old file or the complete new one, never half of it: the data goes to a temporary name in the
same folder (a rename is atomic only within one filesystem), is flushed to disk, and only then
replaces the target; the folder is flushed too, so the rename itself survives a crash. On any
failure (disk full, cancel, a bug) the temporary is removed and the target is untouched.

`commit_all` extends this to a set of files (a song's stems): all are written to temporaries
first, then swapped in; a failure puts the old set back whole.
"""

from __future__ import annotations

import errno
import os
import secrets
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


def try_lock(fd: int) -> bool:
    """An exclusive, non-blocking advisory lock on an open file; False if another open file
    holds it. The system drops it when its holder dies, so a killed process never leaves a
    stale lock (unlike a PID file)."""
    if sys.platform == "win32":  # pragma: no cover - Windows: a byte-range lock
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's data and metadata to disk (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # e.g. a folder on a platform that cannot open folders: nothing to flush
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (and Windows folders) refuse fsync; the rename still holds
    finally:
        os.close(fd)


def temp_name(target: Path) -> Path:
    """A hidden, unique sibling of `target` for staging (cleaned up by its writer)."""
    return target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")


def write_bytes_atomic(target: Path, data: bytes) -> None:
    """Replace `target` with `data`, atomically and durably (see module docstring)."""
    write_atomic(target, lambda f: f.write(data))


def write_atomic(target: Path, write: Callable[[BinaryIO], object]) -> None:
    """Replace `target` with what `write` writes into the binary file it is given (e.g. a
    library's own saver), atomically and durably (see module docstring)."""
    target = Path(target)
    tmp = temp_name(target)
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(target.parent)


def write_text_atomic(target: Path, text: str) -> None:
    """`write_bytes_atomic` for UTF-8 text."""
    write_bytes_atomic(target, text.encode("utf-8"))


# --- replacing a set of files, all or nothing ----------------------------------------------

FileId = tuple[int, int]  # (st_dev, st_ino): which file a name points at right now


def file_id(path: Path) -> FileId | None:
    """The identity of the file at `path` (not following a symlink), None if absent."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


@dataclass
class Staged:
    """A complete, fsynced temporary (`temp`, identity `temp_id`) waiting to become `target`."""

    target: Path
    temp: Path
    temp_id: FileId | None
    backup: Path | None = None  # the old target, kept until the whole set is in place
    placed: bool = False

    @classmethod
    def of(cls, target: Path, temp: Path) -> Staged:
        return cls(Path(target), Path(temp), file_id(temp))


def commit_all(staged: Sequence[Staged], overwrite: bool) -> None:
    """Move every temporary onto its target: all of them, or none.

    Without `overwrite` an existing target raises FileExistsError (a hard link places the
    file, so one appearing meanwhile is never replaced). With it, each old target is kept as
    a hidden backup (a hard link: no copy) until the whole set is in place. On any failure
    the targets placed so far are put back as they were, and only files this call placed (same
    device and inode as its temporary) are removed: a file someone else wrote to one of these
    names meanwhile is left alone. The temporaries are the caller's (`discard_temps`)."""
    try:
        for item in staged:
            _place(item, overwrite)
        for folder in {item.target.parent for item in staged}:
            fsync_path(folder)
    except BaseException:
        _undo(staged)
        raise
    for item in staged:
        if item.backup is not None:
            item.backup.unlink(missing_ok=True)
            item.backup = None


def _place(item: Staged, overwrite: bool) -> None:
    if not overwrite:
        try:
            os.link(item.temp, item.target)  # atomic, and never replaces an existing file
        except FileExistsError:
            raise
        except OSError:  # no hard links on this filesystem (FAT, some network shares)
            if os.path.lexists(item.target):
                raise FileExistsError(errno.EEXIST, "exists", str(item.target)) from None
            os.replace(item.temp, item.target)
        else:
            os.unlink(item.temp)
    else:
        if os.path.lexists(item.target):
            item.backup = item.target.with_name(f".{item.target.name}.old-"
                                                f"{secrets.token_hex(4)}")
            try:
                os.link(item.target, item.backup)
            except OSError:  # no hard links: move the old file aside instead
                os.rename(item.target, item.backup)
        os.replace(item.temp, item.target)
    item.placed = True


def _undo(staged: Sequence[Staged]) -> None:
    """Put the targets back as they were before `commit_all`, touching only our own files."""
    for item in reversed(staged):
        ours = item.placed and file_id(item.target) == item.temp_id
        try:
            if item.backup is not None and (ours or not os.path.lexists(item.target)):
                os.replace(item.backup, item.target)  # the old file, back in place
            elif ours:
                os.unlink(item.target)
            elif item.backup is not None:
                os.unlink(item.backup)  # another writer's file holds the name now: keep it
        except OSError:
            pass  # best effort: a backup left behind is still the person's old file
        item.backup = None


def discard_temps(staged: Sequence[Staged]) -> None:
    """Remove the temporaries that are still ours (by identity, never by name alone)."""
    for item in staged:
        if item.temp_id is not None and file_id(item.temp) == item.temp_id:
            item.temp.unlink(missing_ok=True)
