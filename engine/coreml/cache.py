"""The cache of converted CoreML packages: convert once per model and settings, load after.

Layout, under `data_dir()/coreml` (`cache_root()`):
    <entry>/core.mlpackage     the ML Program (engine.coreml.convert)
    <entry>/core.mlmodelc      its compiled form (macOS only)
    <entry>/manifest.json      key, metadata, size and SHA-256 of every file - written last
    .<entry>.lock              fcntl lock: one process converts an entry at a time
    .tmp-<entry>-<id>/         a conversion in progress (or one that was killed)
`<entry>` names the model, checkpoint, precision, compression and batch, and ends with the
digest of the whole `CacheKey` (checkpoint SHA-256, precision, compression, batch, segment,
coremltools version, conversion version).

A conversion writes into a temp dir, writes the manifest last, and renames the dir into place,
so an entry appears whole or not at all. An entry is loaded only if it validates (manifest
matches the key, every file has the recorded size and SHA-256, the package's spec reads back
with the right checkpoint); anything else is moved aside and rebuilt, never loaded.
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

from engine.atomicio import fsync_path, write_text_atomic
from engine.coreml.convert import (
    CONVERSION_VERSION,
    DEFAULT_OPTIONS,
    META_PREFIX,
    PACKAGE_NAME,
    ConvertOptions,
    ConvertProgress,
    ProgressCallback,
    convert_core,
    coremltools_version,
    directory_bytes,
    emit,
    read_metadata,
)
from engine.download import file_sha256
from engine.errors import CancelFlag, DemixerError, check_cancel
from engine.store import data_subdir

if TYPE_CHECKING:
    from torch import nn

    from engine.store import ResolvedModel

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


def cache_root() -> Path:
    """`data_dir()/coreml`, created on demand."""
    return data_subdir("coreml")


@dataclass(frozen=True)
class CacheKey:
    """Everything a converted package depends on."""

    model: str
    checkpoint_sha256: str
    precision: str
    compression: str  # "none", "6bit", "8bit"
    batch: int
    segment: str  # "native" (the model's own training length) or a bag override in seconds
    coremltools_version: str
    conversion_version: int

    @classmethod
    def make(cls, model: str, checkpoint_sha256: str,
             options: ConvertOptions = DEFAULT_OPTIONS,
             segment: float | Fraction | None = None) -> CacheKey:
        seg = "native" if segment is None else str(Fraction(segment).limit_denominator(10**6))
        return cls(model=model, checkpoint_sha256=checkpoint_sha256,
                   precision=options.precision, compression=options.compress or "none",
                   batch=options.batch, segment=seg, coremltools_version=coremltools_version(),
                   conversion_version=CONVERSION_VERSION)

    @property
    def options(self) -> ConvertOptions:
        compress = None if self.compression == "none" else self.compression
        return ConvertOptions(precision=self.precision, compress=compress, batch=self.batch)

    @property
    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def entry_name(self) -> str:
        return (f"{self.model}-{self.checkpoint_sha256[:8]}-{self.precision}-"
                f"{self.compression}-b{self.batch}-{self.digest[:12]}")


@dataclass(frozen=True)
class CachedPackage:
    """A valid cache entry; `hit` tells whether it was there already."""

    entry: Path
    manifest: dict[str, Any] = field(repr=False)
    hit: bool
    seconds: float = 0.0  # conversion time; 0 on a hit

    @property
    def package(self) -> Path:
        return self.entry / PACKAGE_NAME

    @property
    def compiled(self) -> Path | None:
        """The compiled `.mlmodelc` (made on macOS at conversion), if there is one."""
        name = self.manifest.get("compiled")
        return self.entry / name if name and (self.entry / name).is_dir() else None

    @property
    def package_bytes(self) -> int:
        return int(self.manifest["package_bytes"])

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.manifest["metadata"])


# --- validation ----------------------------------------------------------------------------


def _read_manifest(entry: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _manifest_damage(manifest: dict[str, Any]) -> str | None:
    """What is wrong with a manifest's fields (edited by hand, or another version's), if any."""
    key, files = manifest.get("key"), manifest.get("files")
    if not isinstance(key, dict) or not isinstance(key.get("checkpoint_sha256"), str):
        return "no key"
    if not isinstance(files, dict):
        return "no file list"
    for rel, info in files.items():
        if not (isinstance(info, dict) and type(info.get("bytes")) is int
                and isinstance(info.get("sha256"), str)):
            return f"no integer size and SHA-256 for {rel}"
    if "package_bytes" in manifest and type(manifest["package_bytes"]) is not int:
        return "a package size that is not a whole number"
    if not isinstance(manifest.get("metadata", {}), dict):
        return "no metadata"
    return None


def _check_files(entry: Path, files: dict[str, Any], deep: bool) -> str | None:
    for rel, info in files.items():
        path = entry / rel
        if not path.is_file():
            return f"{rel} is missing"
        if path.stat().st_size != info["bytes"]:
            return f"{rel} has {path.stat().st_size} bytes, not {info['bytes']}"
        if deep and file_sha256(path) != info["sha256"]:
            return f"{rel} does not match its SHA-256"
    return None


def validate_entry(entry: Path, key: CacheKey | None = None, *, deep: bool = True) -> str | None:
    """None if `entry` is a complete package for `key`, else why not (for logs and the CLI).

    `deep` also hashes every file and reads the package's spec back (about 0.3 s for the
    100 MB htdemucs package); without it only the manifest and the file sizes are checked.
    """
    if not entry.is_dir():
        return "not converted"
    manifest = _read_manifest(entry)
    if manifest is None or manifest.get("format") != MANIFEST_FORMAT:
        return "no manifest: an interrupted or foreign conversion"
    damage = _manifest_damage(manifest)
    if damage is not None:
        return f"a damaged manifest ({damage})"
    if key is not None and manifest.get("key") != asdict(key):
        return "the manifest is for other settings"
    try:
        problem = _check_files(entry, dict(manifest["files"]), deep)
    except (KeyError, TypeError, OSError) as exc:
        return f"the manifest or a file is unreadable ({exc})"
    if problem is not None or not deep:
        return problem
    try:
        metadata = read_metadata(entry / PACKAGE_NAME)
    except Exception as exc:  # any parse failure means: do not load this
        return f"the package cannot be read ({type(exc).__name__}: {exc})"
    sha = manifest["key"]["checkpoint_sha256"]
    if metadata.get(META_PREFIX + "checkpoint_sha256") != sha:
        return "the package's metadata names another checkpoint"
    return None


def find_package(key: CacheKey, root: Path | None = None) -> CachedPackage | None:
    """The valid entry for `key`, or None (also when an entry exists but is broken)."""
    entry = (root or cache_root()) / key.entry_name
    if validate_entry(entry, key) is not None:
        return None
    manifest = _read_manifest(entry)
    assert manifest is not None  # validated just now
    return CachedPackage(entry=entry, manifest=manifest, hit=True)


# --- locking and atomic publication -----------------------------------------------------------


@contextmanager
def entry_lock(lock_path: Path, *, blocking: bool = True, cancel: CancelFlag | None = None,
               on_wait: Callable[[], None] | None = None,
               timeout: float | None = None) -> Iterator[bool]:
    """Hold an exclusive `fcntl.flock` on `lock_path`; yields False if not `blocking` and
    another process holds it. Polls so that `cancel` (raises `Cancelled`) is honoured.
    The kernel drops the lock when its holder dies, so a killed conversion never blocks."""
    try:
        import fcntl
    except ImportError as exc:  # Windows: coremltools does not convert there either
        raise DemixerError("CoreML conversion needs macOS or Linux.") from exc
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not blocking:
                    yield False
                    return
                if not waited and on_wait is not None:
                    on_wait()
                waited = True
                check_cancel(cancel)
                if deadline is not None and time.monotonic() > deadline:
                    raise DemixerError(f"Another Demixer process has been converting for too "
                                       f"long (lock {lock_path}); try again later.") from None
                time.sleep(0.1)
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _fsync_tree(path: Path) -> None:
    """Flush every file and folder under `path` to disk before it is published."""
    for item in sorted(path.rglob("*"), reverse=True) + [path]:
        fsync_path(item)


def _discard(path: Path) -> None:
    """Move `path` aside (one rename, so nobody sees it half-deleted), then delete it."""
    if not path.exists():
        return
    trash = path.with_name(f".trash-{path.name}-{secrets.token_hex(4)}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _remove_leftovers(root: Path, entry_name: str) -> None:
    """Temp and trash dirs of `entry_name` from killed runs (call with the entry's lock held)."""
    for pattern in (f".tmp-{entry_name}-*", f".trash-{entry_name}-*"):
        for stale in root.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


def _write_manifest(tmp: Path, key: CacheKey, metadata: dict[str, str], seconds: float,
                    compiled: Path | None) -> dict[str, Any]:
    files = {p.relative_to(tmp).as_posix(): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
             for p in sorted(tmp.rglob("*")) if p.is_file()}
    manifest = {
        "format": MANIFEST_FORMAT, "key": asdict(key), "metadata": metadata,
        "package_bytes": directory_bytes(tmp / PACKAGE_NAME),
        "compiled": compiled.name if compiled is not None else None,
        "conversion_seconds": round(seconds, 2),
        "created": datetime.now(UTC).isoformat(timespec="seconds"), "files": files,
    }
    _fsync_tree(tmp)
    write_text_atomic(tmp / MANIFEST, json.dumps(manifest, indent=1))  # complete or absent
    return manifest


def _publish(tmp: Path, entry: Path, key: CacheKey) -> bool:
    """Rename `tmp` to `entry`; False if a valid `entry` appeared meanwhile (tmp dropped)."""
    try:
        os.rename(tmp, entry)
    except OSError as exc:
        lost_race = exc.errno in (errno.ENOTEMPTY, errno.EEXIST)
        if not lost_race or validate_entry(entry, key) is not None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    fsync_path(entry.parent)  # make the rename itself durable
    return True


# --- the cache's front door --------------------------------------------------------------------


def _convert_entry(key: CacheKey, load: Callable[[], nn.Module], root: Path,
                   progress: ProgressCallback | None,
                   cancel: CancelFlag | None) -> CachedPackage:
    """Convert into a temp dir and publish it (call with the entry's lock held)."""
    entry = root / key.entry_name
    tmp = root / f".tmp-{key.entry_name}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        emit(progress, "load", f"Loading the {key.model} checkpoint")
        model = load()
        check_cancel(cancel)
        result = convert_core(model, tmp, name=key.model,
                              checkpoint_sha256=key.checkpoint_sha256, options=key.options,
                              progress=progress, cancel=cancel)
        manifest = _write_manifest(tmp, key, result.metadata, result.seconds, result.compiled)
        if not _publish(tmp, entry, key):
            found = find_package(key, root)
            assert found is not None
            return found
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # best effort; a kill leaves it for later
        raise
    return CachedPackage(entry=entry, manifest=manifest, hit=False, seconds=result.seconds)


def ensure_package(key: CacheKey, load: Callable[[], nn.Module], *, root: Path | None = None,
                   progress: ProgressCallback | None = None,
                   cancel: CancelFlag | None = None,
                   lock_timeout: float | None = None) -> CachedPackage:
    """The package for `key`: from the cache (`hit=True`) or converted now.

    `load()` gives the HTDemucs (a bag member) to convert; it is called only on a miss. A
    broken entry is moved aside and rebuilt. Another process converting the same entry is
    waited for (then it is a hit). Raises `Cancelled` through `cancel`.
    """
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    found = find_package(key, root)
    if found is not None:
        return found

    def waiting() -> None:
        emit(progress, "load", f"Waiting for another Demixer process converting {key.model}")

    with entry_lock(root / f".{key.entry_name}.lock", cancel=cancel, on_wait=waiting,
                    timeout=lock_timeout):
        found = find_package(key, root)  # the process we waited for may have made it
        if found is not None:
            return found
        entry = root / key.entry_name
        if entry.exists():  # broken: never load it, rebuild it
            reason = validate_entry(entry, key)
            emit(progress, "load", f"Rebuilding the CoreML package of {key.model} ({reason})")
            _discard(entry)
        _remove_leftovers(root, key.entry_name)
        return _convert_entry(key, load, root, progress, cancel)


def _member_progress(progress: ProgressCallback | None, index: int,
                     count: int) -> ProgressCallback | None:
    """Scale a member's events into its share of a bag's progress bar."""
    if progress is None or count == 1:
        return progress

    def scaled(event: ConvertProgress) -> None:
        progress(ConvertProgress(event.stage, (index + event.fraction) / count,
                                 f"model {index + 1}/{count}: {event.message}"))
    return scaled


def ensure_model_packages(resolved: ResolvedModel, options: ConvertOptions = DEFAULT_OPTIONS,
                          *, bag: Any = None, root: Path | None = None,
                          progress: ProgressCallback | None = None,
                          cancel: CancelFlag | None = None) -> list[CachedPackage]:
    """One package per checkpoint of `resolved` (a bag has several), converting the missing
    ones. `bag` is the loaded `BagOfModels` if the caller has it; otherwise the checkpoints
    are loaded (once) only if something must be converted."""
    from engine.store import load_model

    loaded: list[Any] = [bag] if bag is not None else []

    def member(index: int) -> nn.Module:
        if not loaded:
            loaded.append(load_model(resolved))
        return loaded[0].models[index]

    count = len(resolved.sha256)
    packages = []
    for index, sha in enumerate(resolved.sha256):
        key = CacheKey.make(resolved.name, sha, options, resolved.segment)
        packages.append(ensure_package(key, partial(member, index), root=root,
                                       progress=_member_progress(progress, index, count),
                                       cancel=cancel))
    return packages


# --- listing and clearing, for `demixer models` ------------------------------------------------


@dataclass(frozen=True)
class EntryInfo:
    entry: Path
    manifest: dict[str, Any] | None = field(repr=False)
    bytes: int
    problem: str | None  # None = complete (sizes checked, not hashes)

    @property
    def key(self) -> dict[str, Any]:
        key = self.manifest.get("key") if self.manifest else None
        return dict(key) if isinstance(key, dict) else {}


def list_entries(root: Path | None = None, *, deep: bool = False) -> list[EntryInfo]:
    """Every entry in the cache, complete or not (cheap unless `deep`)."""
    root = root or cache_root()
    rows = []
    for entry in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        rows.append(EntryInfo(entry=entry, manifest=_read_manifest(entry),
                              bytes=directory_bytes(entry),
                              problem=validate_entry(entry, deep=deep)))
    return rows


def clear_cache(root: Path | None = None) -> tuple[list[tuple[Path, int]], list[Path]]:
    """Delete every entry and leftover not being converted right now.

    Returns ((path, bytes) removed, entries skipped because a conversion holds their lock).
    """
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
                    removed.append((path, directory_bytes(path)))
                    shutil.rmtree(path, ignore_errors=True)
            lock.unlink(missing_ok=True)
    for path in sorted(root.iterdir()):  # entries without a lock file (copied in by hand)
        if path.is_dir() and not path.name.startswith(".") and path not in busy:
            removed.append((path, directory_bytes(path)))
            shutil.rmtree(path, ignore_errors=True)
    return removed, busy
