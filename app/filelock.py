"""Exclusive advisory file locks that the kernel drops when their process dies. Qt-free.

`FileLock(path)` holds `path` (created if missing) or raises BlockingIOError: one for the
running app (`app.instance`), one per library folder a separation writes into (`app.library`).
A crash, a kill -9 or a power loss leaves no stale lock behind, unlike a PID file.
NB: flock locks belong to the open file, so a second lock from the same process conflicts
too (two windows in one test process behave as two processes would).
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.atomicio import try_lock


class FileLock:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = try_lock(self.fd)
        except OSError:
            locked = False  # a file system without locks: nobody can be sure to hold it
        if not locked:
            os.close(self.fd)
            self.fd = None
            raise BlockingIOError(f"{self.path} is held by another process")

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the file releases its lock
            self.fd = None


def held_elsewhere(path: Path) -> bool:
    """Whether another open file (another process, another window) holds `path`'s lock."""
    if not Path(path).exists():
        return False
    try:
        lock = FileLock(path)
    except BlockingIOError:
        return True
    except OSError:
        return False  # cannot even open it: nobody can lock it either
    lock.release()
    return False
