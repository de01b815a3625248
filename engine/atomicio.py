"""Atomic, durable file writes: the one home for "write a temporary, fsync, rename into place".

A reader (another thread, another process, the next start after a power loss) sees either the
old file or the complete new one, never half of it: the data goes to a temporary name in the
same folder (a rename is atomic only within one filesystem), is flushed to disk, and only then
replaces the target; the folder is flushed too, so the rename itself survives a crash. On any
failure (disk full, cancel, a bug) the temporary is removed and the target is untouched.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


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
