"""The model store: find a model's checkpoints, verify them, load them.

`resolve_model(name)` looks in this order and stops at the first place that is given:
  1. `repo` (`--repo DIR`), 2. `$DEMIXER_MODEL_REPO` — both demucs-style local repos
     (`NAME.yaml` listing signatures plus `SIG-<sha8>.th`, or a single `NAME[-sha8].th`);
     a given repo without the model is an error, never a silent download;
  3. `checkpoints_dir()` in the per-user data dir, with the catalogue's file names;
  4. a download from the catalogue URL (`$DEMIXER_DOWNLOAD_ROOT` replaces the root, for
     mirrors and tests) into `checkpoints_dir()`.
Every file is hashed before it is unpickled, and unpickled with `torch.load(weights_only=True)`
and an allow-list of the demucs classes (`load_package`): a checkpoint is a pickle, and an
unrestricted one runs whatever code it names. Local-repo files are checked as demucs does
(the `-xxxxxxxx` in the name is the start of the SHA-256; a name without one is unverified);
official files against the catalogue's full SHA-256 (its 8-hex prefix where no full digest is
published, as for htdemucs_ft's members). `load_model` turns a `ResolvedModel` into a
demucs `BagOfModels`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import platformdirs
import yaml

from engine.atomicio import write_text_atomic
from engine.catalogue import CheckpointEntry, ModelEntry, get_entry
from engine.download import DownloadProgress, digest_matches, download_file, file_sha256
from engine.errors import CancelFlag, ChecksumError, DemixerError, ModelUnavailableError

if TYPE_CHECKING:
    import torch

ENV_HOME = "DEMIXER_HOME"
ENV_MODEL_REPO = "DEMIXER_MODEL_REPO"
ENV_DOWNLOAD_ROOT = "DEMIXER_DOWNLOAD_ROOT"

_ORIGIN_WORDS = {"repo": "given with --repo", "env": f"set in {ENV_MODEL_REPO}"}


def data_dir() -> Path:
    """The per-user data folder ($DEMIXER_HOME, else the platform's), created on demand.

    Raises DemixerError (one sentence) if it cannot be made or written to: a file in its
    place, a read-only disk, no permission."""
    home = os.environ.get(ENV_HOME)
    if home:
        path = Path(home).expanduser()
    else:
        path = Path(platformdirs.user_data_dir("Demixer", appauthor=False))
    return _usable_folder(path, path)


def data_subdir(name: str) -> Path:
    """A folder of the per-user data dir (models, coreml, library…), created on demand."""
    return _usable_folder(data_dir() / name, data_dir())


def _usable_folder(path: Path, home: Path) -> Path:
    hint = f"set {ENV_HOME} to a writable folder" if os.environ.get(ENV_HOME) else (
        f"make it writable or set {ENV_HOME} to a writable folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DemixerError(f"The data folder {home} cannot be used: {path} is a file, not a "
                           f"folder; {hint}.") from None
    except OSError as err:
        raise DemixerError(f"The data folder {home} cannot be used ({_os_reason(err)}); "
                           f"{hint}.") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise DemixerError(f"The data folder {home} cannot be written to ({path} is "
                           f"read-only); {hint}.")
    return path


def _os_reason(err: OSError) -> str:
    reason = err.strerror or str(err)
    return reason[0].lower() + reason[1:] if reason else type(err).__name__


def checkpoints_dir() -> Path:
    """Where official checkpoints live; also a demucs local repo (we write NAME.yaml there)."""
    return data_subdir("models")


@dataclass(frozen=True)
class ResolvedModel:
    """A model's verified checkpoint files and bag settings, ready for `load_model`."""

    name: str
    checkpoints: tuple[Path, ...]  # one per bag member, in order
    sha256: tuple[str, ...]  # full SHA-256 of each file, also a cache key downstream
    weights: list[list[float]] | None  # bag weights (member x source), None = all ones
    segment: float | None  # the bag's 'segment' override, if any
    origin: str  # "repo", "env", "data" or "download"


def resolve_model(name: str, repo: Path | None = None, *, download: bool = True,
                  progress: Callable[[DownloadProgress], None] | None = None,
                  cancel: CancelFlag | None = None) -> ResolvedModel:
    """Find and verify model `name` (see the module docstring for the order).

    Raises `ModelUnavailableError` (not found / not downloadable, naming the folder),
    `ChecksumError` (a file does not match), `DemixerError` (unknown name outside a local
    repo), `Cancelled` (through `cancel`, during a download).
    """
    if repo is not None:
        return _resolve_local(name, Path(repo).expanduser(), "repo")
    env_repo = os.environ.get(ENV_MODEL_REPO)
    if env_repo:
        return _resolve_local(name, Path(env_repo).expanduser(), "env")
    return _resolve_official(get_entry(name), download, progress, cancel)


# --- local repos (--repo, DEMIXER_MODEL_REPO) --------------------------------------------


def _scan_repo(folder: Path) -> dict[str, list[Path]]:
    """Checkpoint files by signature, parsed as demucs's `LocalRepo` does."""
    found: dict[str, list[Path]] = {}
    for file in sorted(folder.iterdir()):
        if file.suffix == ".th":
            signature = file.stem.rsplit("-", 1)[0] if "-" in file.stem else file.stem
            found.setdefault(signature, []).append(file)
    return found


def _read_bag(bag_file: Path) -> tuple[list[str], list[list[float]] | None, float | None]:
    """Signatures, weights and segment from a demucs bag `NAME.yaml`."""
    try:
        bag = yaml.safe_load(bag_file.read_text(encoding="utf-8"))
        signatures = [str(s) for s in bag["models"]]
        raw_weights = bag.get("weights")
        weights = None if raw_weights is None else [[float(w) for w in row]
                                                    for row in raw_weights]
        segment = None if bag.get("segment") is None else float(bag["segment"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise DemixerError(f"The bag file {bag_file} cannot be read ({exc}); it must list "
                           f"'models' (and optionally 'weights' and 'segment').") from exc
    if not signatures or (weights is not None and len(weights) != len(signatures)):
        raise DemixerError(f"The bag file {bag_file} must list at least one model and one "
                           f"row of weights per model.")
    return signatures, weights, segment


def _expected_files(name: str) -> str:
    """What a local repo should hold for `name`, for error messages."""
    try:
        files = ", ".join(c.file for c in get_entry(name).checkpoints)
    except DemixerError:
        files = "its checkpoints SIG-xxxxxxxx.th"
    return f"{name}.yaml with {files}, or a single checkpoint {name}.th"


def _repo_checkpoint(found: dict[str, list[Path]], signature: str, name: str,
                     folder: Path) -> Path:
    files = found.get(signature, [])
    if not files:
        raise ModelUnavailableError(
            f"The model folder {folder} lists checkpoint {signature} in {name}.yaml but holds "
            f"no {signature}-xxxxxxxx.th file; add it or use another folder.")
    if len(files) > 1:
        names = ", ".join(f.name for f in files)
        raise DemixerError(f"The model folder {folder} has several checkpoints for signature "
                           f"{signature} ({names}); delete all but one.")
    return files[0]


def local_repo_files(name: str, folder: Path) -> list[Path] | None:
    """The checkpoint files of model `name` in a local repo, from names alone (no hashing,
    no reading): None if the folder does not hold it completely."""
    try:
        found = _scan_repo(folder)
        if name in found:
            return found[name] if len(found[name]) == 1 else None
        bag_file = folder / f"{name}.yaml"
        if not bag_file.is_file():
            return None
        signatures, _, _ = _read_bag(bag_file)
    except (OSError, DemixerError):
        return None
    files = [found.get(s, []) for s in signatures]
    return [f[0] for f in files] if all(len(f) == 1 for f in files) else None


def env_repo() -> Path | None:
    """The folder $DEMIXER_MODEL_REPO names, if set."""
    value = os.environ.get(ENV_MODEL_REPO)
    return Path(value).expanduser() if value else None


def download_model(name: str, progress: Callable[[DownloadProgress], None] | None = None,
                   cancel: CancelFlag | None = None) -> ResolvedModel:
    """Download (or verify, if present) catalogue model `name` into the data folder,
    whatever local repo is configured (`demixer models download`)."""
    return _resolve_official(get_entry(name), True, progress, cancel)


def _verify_local(path: Path) -> str:
    """The file's SHA-256, after checking it against the hex prefix in its name, if any."""
    digest = file_sha256(path)
    if "-" in path.stem:
        expected = path.stem.rsplit("-", 1)[1]
        if digest[: len(expected)] != expected:  # as demucs.repo.check_checksum
            raise ChecksumError(
                f"Checkpoint {path.name} in {path.parent} is corrupt: its SHA-256 starts with "
                f"{digest[:8]}, not {expected} as its name says; replace the file.")
    return digest


def _resolve_local(name: str, folder: Path, origin: str) -> ResolvedModel:
    where = f"{folder} ({_ORIGIN_WORDS[origin]})"
    if not folder.is_dir():
        raise ModelUnavailableError(f"The model folder {where} does not exist.")
    found = _scan_repo(folder)
    bag_file = folder / f"{name}.yaml"
    if name in found:  # demucs prefers a single checkpoint over a bag of the same name
        signatures, weights, segment = [name], None, None
    elif bag_file.is_file():
        signatures, weights, segment = _read_bag(bag_file)
    else:
        raise ModelUnavailableError(f"The model folder {where} has no model '{name}'; "
                                    f"expected {_expected_files(name)} there.")
    paths = tuple(_repo_checkpoint(found, s, name, folder) for s in signatures)
    digests = tuple(_verify_local(p) for p in paths)
    return ResolvedModel(name=name, checkpoints=paths, sha256=digests, weights=weights,
                         segment=segment, origin=origin)


# --- the data dir and downloads ----------------------------------------------------------

_path_locks: dict[Path, threading.Lock] = {}
_path_locks_guard = threading.Lock()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise checking/downloading one file between threads of this process."""
    with _path_locks_guard:
        lock = _path_locks.setdefault(path, threading.Lock())
    with lock:
        yield


def _download_url(ckpt: CheckpointEntry) -> str:
    root = os.environ.get(ENV_DOWNLOAD_ROOT)
    return f"{root.rstrip('/')}/{ckpt.file}" if root else ckpt.url


def _is_intact(path: Path, ckpt: CheckpointEntry) -> tuple[bool, str]:
    """Whether `path` matches the catalogue (size and SHA-256), and its digest."""
    if ckpt.bytes is not None and path.stat().st_size != ckpt.bytes:
        return False, ""  # cheap early answer: no need to hash a file of the wrong size
    digest = file_sha256(path)
    return digest_matches(digest, ckpt.sha256, ckpt.sha256_prefix), digest


def _official_checkpoint(name: str, ckpt: CheckpointEntry, folder: Path, download: bool,
                         progress: Callable[[DownloadProgress], None] | None,
                         cancel: CancelFlag | None) -> tuple[Path, str, bool]:
    """(path, SHA-256, downloaded?) of one catalogue checkpoint in `folder`."""
    path = folder / ckpt.file
    url = _download_url(ckpt)
    with _locked(path):
        if path.is_file():
            intact, digest = _is_intact(path, ckpt)
            if intact:
                return path, digest, False
            if not download:
                raise ChecksumError(
                    f"Checkpoint {ckpt.file} of {name} in {folder} is corrupt (it does not "
                    f"match the catalogue's SHA-256); delete it and run again to re-download.")
            path.unlink()  # corrupt: fetch it afresh, once (a second mismatch raises)
        elif not download:
            raise ModelUnavailableError(
                f"Model {name} is not downloaded: put {ckpt.file} (from {url}) in {folder}, "
                f"or allow the download.")
        download_file(url, path, sha256=ckpt.sha256, sha256_prefix=ckpt.sha256_prefix,
                      size=ckpt.bytes, progress=progress, cancel=cancel,
                      label=f"{name} checkpoint")
        return path, file_sha256(path), True


def _write_bag_yaml(entry: ModelEntry, folder: Path) -> None:
    """Write NAME.yaml next to the checkpoints so demucs can use the folder as `--repo`."""
    bag: dict[str, Any] = {"models": [c.signature for c in entry.checkpoints]}
    if entry.weights is not None:
        bag["weights"] = [[float(w) for w in row] for row in entry.weights]
    text = yaml.safe_dump(bag)
    target = folder / f"{entry.name}.yaml"
    if target.is_file() and target.read_text(encoding="utf-8") == text:
        return
    write_text_atomic(target, text)  # demucs never reads half a file


def _resolve_official(entry: ModelEntry, download: bool,
                      progress: Callable[[DownloadProgress], None] | None,
                      cancel: CancelFlag | None) -> ResolvedModel:
    folder = checkpoints_dir()
    found = [_official_checkpoint(entry.name, c, folder, download, progress, cancel)
             for c in entry.checkpoints]
    _write_bag_yaml(entry, folder)
    origin = "download" if any(downloaded for _, _, downloaded in found) else "data"
    return ResolvedModel(name=entry.name, checkpoints=tuple(p for p, _, _ in found),
                         sha256=tuple(d for _, d, _ in found), weights=entry.weights,
                         segment=None, origin=origin)


# --- loading -----------------------------------------------------------------------------


def load_model(resolved: ResolvedModel) -> torch.nn.Module:
    """A demucs `BagOfModels` (even for one checkpoint) in eval mode, on the CPU.

    Each file is re-checked against `resolved.sha256` first (memoised, so nearly free): a file
    swapped since `resolve_model` is refused before it is read. Then it is unpickled with
    `torch.load(weights_only=True)` (`load_package`): nothing in it can run code.
    """
    from demucs.apply import BagOfModels
    from demucs.states import load_model as build_model

    models = []
    for path, digest in zip(resolved.checkpoints, resolved.sha256, strict=True):
        if file_sha256(path) != digest:
            raise ChecksumError(f"Checkpoint {path.name} in {path.parent} changed after it was "
                                f"verified; run again to check it afresh.")
        package = load_package(path)
        try:
            models.append(build_model(package))
        except Exception as exc:  # a verified file that is not a demucs package
            raise DemixerError(f"Checkpoint {path.name} in {path.parent} is not a demucs "
                               f"model ({type(exc).__name__}: {exc}).") from exc
    try:
        bag = BagOfModels(models, resolved.weights, resolved.segment)
    except AssertionError as exc:  # demucs checks bags with asserts
        raise DemixerError(f"The checkpoints of model {resolved.name} cannot form a bag "
                           f"(different sources or sample rates, or weights of the wrong "
                           f"size).") from exc
    return bag.eval()


def safe_checkpoint_globals() -> list[Any]:
    """What a demucs checkpoint may name besides tensors and plain data: the model classes
    (its 'klass') and Fraction (the 'segment' kwarg). Nothing else is ever called."""
    from fractions import Fraction

    from demucs.demucs import Demucs
    from demucs.hdemucs import HDemucs
    from demucs.htdemucs import HTDemucs

    return [HTDemucs, HDemucs, Demucs, Fraction]


def load_package(path: Path) -> dict[str, Any]:
    """Unpickle a demucs checkpoint with `weights_only=True` and the allow-list above.

    A checkpoint is a pickle, and a pickle can run any code while it loads: a file named
    `htdemucs.th` in a local repo could do anything. The restricted unpickler only rebuilds
    tensors, plain containers and the allowed classes; anything else is refused, unrun."""
    import pickle

    import torch

    allowed = safe_checkpoint_globals()
    try:
        with torch.serialization.safe_globals(allowed):
            package = torch.load(path, "cpu", weights_only=True)
    except pickle.UnpicklingError:
        names = _unsafe_globals(path)
        raise DemixerError(f"Checkpoint {path.name} in {path.parent} was not loaded: it asks "
                           f"to run code ({names}), which a demucs model never needs; use a "
                           f"checkpoint made by demucs.") from None
    except Exception as exc:  # not a torch file at all, truncated, ...
        raise DemixerError(f"Checkpoint {path.name} in {path.parent} cannot be read "
                           f"({type(exc).__name__}: {exc}).") from None
    if not isinstance(package, dict) or package.get("klass") not in allowed[:3]:
        raise DemixerError(f"Checkpoint {path.name} in {path.parent} is not a demucs model "
                           f"(no model class in it).")
    return package


def _unsafe_globals(path: Path) -> str:
    import torch

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - only for the message
        names = []
    return ", ".join(names[:3]) or "unknown objects"


# --- status, for `demixer models list` ---------------------------------------------------


@dataclass(frozen=True)
class CheckpointStatus:
    """One official checkpoint in the data dir, from its size alone (no hashing)."""

    file: str
    path: Path
    bytes_on_disk: int | None  # None if absent
    expected_bytes: int | None  # from the catalogue, if published
    partial_bytes: int  # size of a resumable `.part`, 0 if none

    @property
    def present(self) -> bool:
        if self.bytes_on_disk is None:
            return False
        return self.expected_bytes is None or self.bytes_on_disk == self.expected_bytes


@dataclass(frozen=True)
class ModelStatus:
    name: str
    folder: Path
    checkpoints: tuple[CheckpointStatus, ...]

    @property
    def complete(self) -> bool:
        return all(c.present for c in self.checkpoints)


def _size_or_none(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def model_status(name: str) -> ModelStatus:
    """Which checkpoints of catalogue model `name` are in the data dir (cheap: stat only)."""
    folder = checkpoints_dir()
    rows = tuple(CheckpointStatus(file=c.file, path=folder / c.file,
                                  bytes_on_disk=_size_or_none(folder / c.file),
                                  expected_bytes=c.bytes,
                                  partial_bytes=_size_or_none(folder / (c.file + ".part")) or 0)
                 for c in get_entry(name).checkpoints)
    return ModelStatus(name=name, folder=folder, checkpoints=rows)
