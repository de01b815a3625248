"""The cache of exported ONNX cores: export once per checkpoint and settings, run after.

Layout, under `data_dir()/onnx` (`cache_root()`):
    <entry>/core.onnx        the exported core (engine.onnx_export), metadata inside
    <entry>/manifest.json    key, metadata, size, SHA-256 and stat stamp of core.onnx - last
    .<entry>.lock            a file lock: one process exports an entry at a time
    .tmp-<entry>-<id>/       an export in progress (or one that was killed)
`<entry>` names the model, checkpoint, opset and batch, and ends with the digest of the whole
`OnnxKey` (checkpoint SHA-256, opset, batch, segment, demixer / torch / export versions).

An export writes into a temp dir, writes the manifest last, and renames the dir into place,
so an entry appears whole or not at all. An entry is used only if it validates: the manifest
matches the key and core.onnx has the recorded size and SHA-256. Hashing 174 MB takes 0.3 s,
so the manifest also keeps the file's stat stamp (size, mtime, inode) from when it was
hashed: while the stamp holds, the file is the one that was hashed and is not read again
(`deep=True`, as in `demixer models verify`, always hashes). Anything else is moved aside and
exported again, never run. The runtimes' own compiled-model caches live beside this one
(`data_dir()/openvino`), keyed by OpenVINO on this file's path and modification time.

Nothing here imports torch: a start whose export is cached never loads the checkpoint.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import __version__
from engine.atomicio import fsync_path, try_lock, write_text_atomic
from engine.download import file_sha256
from engine.errors import CancelFlag, DemixerError, check_cancel
from engine.onnx_export import (
    EXPORT_VERSION,
    META_PREFIX,
    OPSET,
    ProgressCallback,
    check_export_settings,
    emit,
    export_core,
    shapes_of,
    torch_version,
)
from engine.shapes import CoreShapes
from engine.store import data_subdir

if TYPE_CHECKING:
    from torch import nn

    from engine.store import ResolvedModel

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
ONNX_NAME = "core.onnx"


def cache_root() -> Path:
    """`data_dir()/onnx`, created on demand."""
    return data_subdir("onnx")


@dataclass(frozen=True)
class OnnxKey:
    """Everything an exported core depends on."""

    model: str
    checkpoint_sha256: str
    opset: int
    batch: int
    segment: str  # "native" (the model's own training length) or a bag override in seconds
    demixer_version: str
    torch_version: str
    export_version: int

    @classmethod
    def make(cls, model: str, checkpoint_sha256: str, opset: int = OPSET, batch: int = 1,
             segment: float | None = None) -> OnnxKey:
        check_export_settings(opset, batch)
        seg = "native" if segment is None else str(Fraction(segment).limit_denominator(1000))
        return cls(model=model, checkpoint_sha256=checkpoint_sha256, opset=opset, batch=batch,
                   segment=seg, demixer_version=__version__, torch_version=torch_version(),
                   export_version=EXPORT_VERSION)

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    @property
    def entry_name(self) -> str:
        return (f"{self.model}-{self.checkpoint_sha256[:8]}-o{self.opset}-b{self.batch}-"
                f"{self.digest[:12]}")


@dataclass(frozen=True)
class CachedOnnx:
    """A valid cache entry; `hit` tells whether it was there already."""

    entry: Path
    manifest: dict[str, Any] = field(repr=False)
    hit: bool
    seconds: float = 0.0  # export time; 0 on a hit

    @property
    def path(self) -> Path:
        return self.entry / ONNX_NAME

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.manifest["metadata"])

    @property
    def shapes(self) -> CoreShapes:
        return shapes_of(self.metadata, self.path)

    @property
    def batch(self) -> int:
        return int(self.manifest["key"]["batch"])

    @property
    def bytes(self) -> int:
        return int(self.manifest["file"]["bytes"])


# --- validation ----------------------------------------------------------------------------


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _read_manifest(entry: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _check_file(entry: Path, info: dict[str, Any], deep: bool) -> str | None:
    path = entry / ONNX_NAME
    if not path.is_file():
        return f"{ONNX_NAME} is missing"
    if path.stat().st_size != info["bytes"]:
        return f"{ONNX_NAME} has {path.stat().st_size} bytes, not {info['bytes']}"
    if (deep or _stamp(path) != info["stamp"]) and file_sha256(path) != info["sha256"]:
        return f"{ONNX_NAME} does not match its SHA-256"
    return None


def validate_entry(entry: Path, key: OnnxKey | None = None, *, deep: bool = False) -> str | None:
    """None if `entry` is a complete export for `key`, else why not (for logs and the CLI).
    See the module docstring for when the file is hashed."""
    if not entry.is_dir():
        return "not exported"
    manifest = _read_manifest(entry)
    if manifest is None or manifest.get("format") != MANIFEST_FORMAT:
        return "no manifest: an interrupted or foreign export"
    if key is not None and manifest.get("key") != asdict(key):
        return "the manifest is for other settings"
    try:
        problem = _check_file(entry, dict(manifest["file"]), deep)
        sha = manifest["key"]["checkpoint_sha256"]
        named = manifest["metadata"].get(META_PREFIX + "checkpoint_sha256")
    except (KeyError, TypeError, AttributeError, OSError) as exc:
        return f"the manifest or the file is unreadable ({exc})"
    if problem is None and named != sha:
        return "the export's metadata names another checkpoint"
    return problem


def find_onnx(key: OnnxKey, root: Path | None = None) -> CachedOnnx | None:
    """The valid entry for `key`, or None (also when an entry exists but is broken)."""
    entry = (root or cache_root()) / key.entry_name
    if validate_entry(entry, key) is not None:
        return None
    manifest = _read_manifest(entry)
    assert manifest is not None  # validated just now
    return CachedOnnx(entry=entry, manifest=manifest, hit=True)


# --- locking and atomic publication -----------------------------------------------------------


@contextmanager
def entry_lock(lock_path: Path, *, blocking: bool = True, cancel: CancelFlag | None = None,
               on_wait: Callable[[], None] | None = None,
               timeout: float | None = None) -> Iterator[bool]:
    """Hold the lock file `lock_path`; yields False if not `blocking` and another process
    holds it. Polls, so that `cancel` (raises `Cancelled`) is honoured while waiting."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        waited = False
        while not try_lock(fd):
            if not blocking:
                yield False
                return
            if not waited and on_wait is not None:
                on_wait()
            waited = True
            check_cancel(cancel)
            if deadline is not None and time.monotonic() > deadline:
                raise DemixerError(f"Another Demixer process has been exporting for too long "
                                   f"(lock {lock_path}); try again later.")
            time.sleep(0.1)
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _discard(path: Path) -> None:
    """Move `path` aside (one rename, so nobody sees it half-deleted), then delete it."""
    if path.exists():
        trash = path.with_name(f".trash-{path.name}-{secrets.token_hex(4)}")
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)


def _remove_leftovers(root: Path, entry_name: str) -> None:
    """Temp and trash dirs of `entry_name` from killed runs (call with the entry's lock held)."""
    for pattern in (f".tmp-{entry_name}-*", f".trash-{entry_name}-*"):
        for stale in root.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


def _write_manifest(tmp: Path, key: OnnxKey, metadata: dict[str, str],
                    seconds: float) -> dict[str, Any]:
    path = tmp / ONNX_NAME
    fsync_path(path)
    manifest = {
        "format": MANIFEST_FORMAT, "key": asdict(key), "metadata": metadata,
        "file": {"bytes": path.stat().st_size, "sha256": file_sha256(path),
                 "stamp": _stamp(path)},
        "export_seconds": round(seconds, 2),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_text_atomic(tmp / MANIFEST, json.dumps(manifest, indent=1))  # the entry's seal
    return manifest


def _publish(tmp: Path, entry: Path, key: OnnxKey) -> bool:
    """Rename `tmp` to `entry`; False if a valid `entry` appeared meanwhile (tmp dropped)."""
    try:
        os.rename(tmp, entry)
    except OSError as exc:
        lost_race = exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.EACCES)
        if not lost_race or validate_entry(entry, key) is not None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    fsync_path(entry.parent)  # make the rename itself durable
    return True


# --- the cache's front door --------------------------------------------------------------------


def _export_entry(key: OnnxKey, load: Callable[[], nn.Module], root: Path,
                  progress: ProgressCallback | None,
                  cancel: CancelFlag | None) -> CachedOnnx:
    """Export into a temp dir and publish it (call with the entry's lock held)."""
    entry = root / key.entry_name
    tmp = root / f".tmp-{key.entry_name}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        tmp.mkdir()
        emit(progress, "load", f"Loading the {key.model} checkpoint")
        model = load()
        result = export_core(model, tmp / ONNX_NAME, name=key.model,
                             checkpoint_sha256=key.checkpoint_sha256, opset=key.opset,
                             batch=key.batch, progress=progress, cancel=cancel)
        manifest = _write_manifest(tmp, key, result.metadata, result.seconds)
        if not _publish(tmp, entry, key):
            found = find_onnx(key, root)
            assert found is not None
            return found
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # best effort; a kill leaves it for later
        raise
    return CachedOnnx(entry=entry, manifest=manifest, hit=False, seconds=result.seconds)


def ensure_onnx(key: OnnxKey, load: Callable[[], nn.Module], *, root: Path | None = None,
                progress: ProgressCallback | None = None, cancel: CancelFlag | None = None,
                lock_timeout: float | None = None) -> CachedOnnx:
    """The export for `key`: from the cache (`hit=True`) or exported now.

    `load()` gives the HTDemucs (a bag member) to export; it is called only on a miss. A
    broken entry is moved aside and exported again. Another process exporting the same entry
    is waited for (then it is a hit). Raises `Cancelled` through `cancel`.
    """
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    found = find_onnx(key, root)
    if found is not None:
        return found

    def waiting() -> None:
        emit(progress, "load", f"Waiting for another Demixer process exporting {key.model}")

    with entry_lock(root / f".{key.entry_name}.lock", cancel=cancel, on_wait=waiting,
                    timeout=lock_timeout):
        found = find_onnx(key, root)  # the process we waited for may have made it
        if found is not None:
            return found
        entry = root / key.entry_name
        if entry.exists():  # broken: never run it, export it again
            reason = validate_entry(entry, key)
            emit(progress, "load", f"Exporting {key.model} again ({reason})")
            _discard(entry)
        _remove_leftovers(root, key.entry_name)
        return _export_entry(key, load, root, progress, cancel)


def _member_progress(progress: ProgressCallback | None, index: int,
                     count: int) -> ProgressCallback | None:
    """Scale a member's events into its share of a bag's progress bar."""
    if progress is None or count == 1:
        return progress
    from engine.coreml.convert import ConvertProgress

    def scaled(event: ConvertProgress) -> None:
        progress(ConvertProgress(event.stage, (index + event.fraction) / count,
                                 f"model {index + 1}/{count}: {event.message}"))
    return scaled


def ensure_model_onnx(resolved: ResolvedModel, *, opset: int = OPSET, batch: int = 1,
                      bag: Any = None, root: Path | None = None,
                      progress: ProgressCallback | None = None,
                      cancel: CancelFlag | None = None) -> list[CachedOnnx]:
    """One export per checkpoint of `resolved` (a bag has several), exporting the missing
    ones. `bag` is the loaded `BagOfModels` if the caller has it; otherwise the checkpoints
    are loaded (once, with torch) only if something must be exported."""
    loaded: list[Any] = [bag] if bag is not None else []

    def member(index: int) -> nn.Module:
        if not loaded:
            from engine.store import load_model

            loaded.append(load_model(resolved))
        return loaded[0].models[index]

    count = len(resolved.sha256)
    return [ensure_onnx(OnnxKey.make(resolved.name, sha, opset, batch, resolved.segment),
                        partial(member, index), root=root,
                        progress=_member_progress(progress, index, count), cancel=cancel)
            for index, sha in enumerate(resolved.sha256)]


# --- listing and clearing, for `demixer models` ------------------------------------------------


@dataclass(frozen=True)
class EntryInfo:
    entry: Path
    manifest: dict[str, Any] | None = field(repr=False)
    bytes: int
    problem: str | None  # None = complete

    @property
    def key(self) -> dict[str, Any]:
        return dict(self.manifest["key"]) if self.manifest else {}


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() \
        else path.stat().st_size


def list_entries(root: Path | None = None, *, deep: bool = False) -> list[EntryInfo]:
    """Every entry in the cache, complete or not (cheap unless `deep`)."""
    root = root or cache_root()
    return [EntryInfo(entry=e, manifest=_read_manifest(e), bytes=_bytes(e),
                      problem=validate_entry(e, deep=deep))
            for e in sorted(p for p in root.iterdir() if p.is_dir()
                            and not p.name.startswith("."))]


def compiled_cache_dirs() -> list[Path]:
    """The runtimes' compiled-model caches made from these exports (OpenVINO's)."""
    return [data_subdir("openvino")]


def clear_cache(root: Path | None = None) -> tuple[list[tuple[Path, int]], list[Path]]:
    """Delete every entry not being exported right now, and the runtimes' compiled models.

    Returns ((path, bytes) removed, entries skipped because an export holds their lock)."""
    root = root or cache_root()
    removed: list[tuple[Path, int]] = []
    busy: list[Path] = []
    for lock in sorted(root.glob(".*.lock")):
        entry_name = lock.name[1:-len(".lock")]
        with entry_lock(lock, blocking=False) as held:
            if not held:
                busy.append(root / entry_name)
                continue
            for path in [root / entry_name, *root.glob(f".tmp-{entry_name}-*"),
                         *root.glob(f".trash-{entry_name}-*")]:
                if path.exists():
                    removed.append((path, _bytes(path)))
                    shutil.rmtree(path, ignore_errors=True)
            lock.unlink(missing_ok=True)
    for path in sorted(root.iterdir()):  # entries without a lock file (copied in by hand)
        if path.is_dir() and not path.name.startswith(".") and path not in busy:
            removed.append((path, _bytes(path)))
            shutil.rmtree(path, ignore_errors=True)
    if not busy:  # a compile may be reading an export that is still being made otherwise
        for folder in compiled_cache_dirs():
            for blob in sorted(folder.iterdir()):
                removed.append((blob, _bytes(blob)))
                if blob.is_dir():
                    shutil.rmtree(blob, ignore_errors=True)
                else:
                    blob.unlink()
    return removed, busy
