"""The CoreML package cache: hits, keys, broken entries, killed and concurrent conversions.

Destructive tests work on a copy of the session's tiny package (tests/engine/test_convert.py);
nothing here runs coremltools's conversion again.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

import pytest

from engine.coreml.cache import (
    MANIFEST,
    CachedPackage,
    CacheKey,
    clear_cache,
    ensure_model_packages,
    ensure_package,
    entry_lock,
    find_package,
    list_entries,
    validate_entry,
)
from engine.coreml.convert import ConvertOptions, ConvertProgress
from engine.errors import Cancelled
from engine.store import resolve_model
from tests.engine.test_convert import tiny_session_package

REPO_ROOT = Path(__file__).resolve().parents[2]


class Boom(Exception):
    """Raised by a `load` that must not be reached, or that stands for a conversion."""


def _boom() -> NoReturn:
    raise Boom()


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory: pytest.TempPathFactory, tiny_repo: Path) -> CachedPackage:
    return tiny_session_package(tmp_path_factory, tiny_repo)


def _key(package: CachedPackage) -> CacheKey:
    return CacheKey(**package.manifest["key"])


@pytest.fixture()
def cache_copy(tiny_package: CachedPackage, tmp_path: Path) -> tuple[Path, CacheKey]:
    root = tmp_path / "coreml"
    shutil.copytree(tiny_package.entry.parent, root)
    return root, _key(tiny_package)


def test_second_call_is_a_hit_and_loads_nothing(tiny_package: CachedPackage, tiny_repo: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("engine.store.load_model", _boom)
    events: list[object] = []
    [again] = ensure_model_packages(resolve_model("htdemucs_6s", tiny_repo),
                                    ConvertOptions(batch=2), root=tiny_package.entry.parent,
                                    progress=events.append)
    assert again.hit and again.entry == tiny_package.entry and events == []
    assert again.package.is_dir() and again.package_bytes == tiny_package.package_bytes
    assert not tiny_package.hit  # the session's first call did convert


def test_a_bag_gets_one_package_per_member_from_the_given_bag(
        tmp_path: Path, tiny_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Bag:  # the caller's loaded BagOfModels; its members are what gets converted
        @property
        def models(self) -> list[object]:
            raise Boom()

    monkeypatch.setattr("engine.store.load_model", lambda resolved: pytest.fail("reloaded"))
    resolved = resolve_model("htdemucs_ft", tiny_repo)
    assert len(resolved.sha256) == 4
    events: list[ConvertProgress] = []
    with pytest.raises(Boom):
        ensure_model_packages(resolved, bag=Bag(), root=tmp_path, progress=events.append)
    assert [(e.stage, e.fraction, e.message) for e in events] == [
        ("load", 0.0, "model 1/4: Loading the htdemucs_ft checkpoint")]


def test_every_key_field_selects_its_own_entry() -> None:
    base = CacheKey.make("htdemucs_6s", "a" * 64)
    assert base == CacheKey.make("htdemucs_6s", "a" * 64, ConvertOptions(), None)
    assert base.segment == "native" and base.compression == "none"
    variants = [CacheKey.make("htdemucs_6s", "b" * 64),
                CacheKey.make("htdemucs_6s", "a" * 64, ConvertOptions(precision="fp32")),
                CacheKey.make("htdemucs_6s", "a" * 64, ConvertOptions(compress="8bit")),
                CacheKey.make("htdemucs_6s", "a" * 64, ConvertOptions(batch=2)),
                CacheKey.make("htdemucs_6s", "a" * 64, segment=7.8),
                replace(base, coremltools_version="9.1"), replace(base, conversion_version=99)]
    names = {k.entry_name for k in [base, *variants]}
    assert len(names) == 1 + len(variants)
    assert base.entry_name.startswith("htdemucs_6s-aaaaaaaa-mixed-none-b1-")
    assert base.options == ConvertOptions()


def _truncate_weights(entry: Path) -> None:
    weights = next(entry.rglob("weight.bin"))
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)


def _flip_a_weight_byte(entry: Path) -> None:
    weights = next(entry.rglob("weight.bin"))
    with open(weights, "r+b") as f:
        f.seek(weights.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def _drop_manifest(entry: Path) -> None:
    (entry / MANIFEST).unlink()


def _manifest_of_other_settings(entry: Path) -> None:
    manifest = json.loads((entry / MANIFEST).read_text())
    manifest["key"]["precision"] = "fp32"
    (entry / MANIFEST).write_text(json.dumps(manifest))


def _garbage_spec_with_matching_manifest(entry: Path) -> None:
    """A spec that is not a model, even though the manifest agrees with the bytes on disk."""
    import hashlib

    spec = next(entry.rglob("model.mlmodel"))
    spec.write_bytes(b"\x00not a protobuf\xff" * 100)
    manifest = json.loads((entry / MANIFEST).read_text())
    rel = spec.relative_to(entry).as_posix()
    manifest["files"][rel] = {"bytes": spec.stat().st_size,
                              "sha256": hashlib.sha256(spec.read_bytes()).hexdigest()}
    (entry / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage", [_truncate_weights, _flip_a_weight_byte, _drop_manifest,
                                    _manifest_of_other_settings,
                                    _garbage_spec_with_matching_manifest])
def test_a_broken_entry_is_rebuilt_never_loaded(cache_copy: tuple[Path, CacheKey],
                                                damage: object) -> None:
    root, key = cache_copy
    entry = root / key.entry_name
    assert validate_entry(entry, key) is None  # the copy is good before the damage
    damage(entry)  # type: ignore[operator]
    assert validate_entry(entry, key) is not None
    assert find_package(key, root) is None
    events: list[ConvertProgress] = []
    with pytest.raises(Boom):  # a miss: it goes on to load the checkpoint and convert
        ensure_package(key, _boom, root=root, progress=events.append)
    assert events[0].message.startswith("Rebuilding the CoreML package of htdemucs_6s (")
    assert [p.name for p in root.iterdir() if p.is_dir()] == []  # moved aside and deleted


# The two multi-process tests are about the cache (lock, temp dir, rename), not about
# coremltools: their children replace trace + convert by loading the session's tiny package
# (argv[-1]), and then save, publish and lock for real. This keeps each child to seconds.
_CONVERTED_ALREADY = textwrap.dedent("""
    import sys
    from pathlib import Path
    import engine.coreml.convert as convert

    def converted_already(model, name, options, progress=None, cancel=None):
        ct = convert.import_coremltools()
        convert.emit(progress, "convert", "a converted package stands in")
        package = Path(sys.argv[-1])
        shapes = convert.shapes_from_metadata(convert.read_metadata(package))
        return ct.models.MLModel(str(package), skip_model_load=True), shapes

    convert.build_mlmodel = converted_already
""")

_KILLED_CHILD = _CONVERTED_ALREADY + textwrap.dedent("""
    import os, signal
    import coremltools as ct
    from engine.coreml.convert import ConvertOptions, ConvertProgress
    from engine.coreml.cache import CacheKey, ensure_package
    from engine.store import load_model, resolve_model

    root, repo = Path(sys.argv[1]), Path(sys.argv[2])
    resolved = resolve_model("htdemucs_6s", repo)
    key = CacheKey.make("htdemucs_6s", resolved.sha256[0], ConvertOptions(batch=2))
    real_save = ct.models.MLModel.save

    def save_then_die(self, path):
        real_save(self, path)
        weights = next(Path(path).rglob("weight.bin"))  # half of it reached the disk...
        with open(weights, "r+b") as f:
            f.truncate(weights.stat().st_size // 2)
        os.kill(os.getpid(), signal.SIGKILL)  # ...when the process was killed

    ct.models.MLModel.save = save_then_die
    ensure_package(key, lambda: load_model(resolved).models[0], root=root)
""")


def _child(script: str, *args: object) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=env,
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_a_conversion_killed_halfway_leaves_nothing_loadable(
        tmp_path: Path, tiny_repo: Path, tiny_package: CachedPackage) -> None:
    root = tmp_path / "coreml"
    child = _child(_KILLED_CHILD, root, tiny_repo, tiny_package.package)
    _, err = child.communicate(timeout=300)
    assert child.returncode == -signal.SIGKILL, err
    key = CacheKey.make("htdemucs_6s", resolve_model("htdemucs_6s", tiny_repo).sha256[0],
                        ConvertOptions(batch=2))
    [partial] = root.glob(".tmp-*")
    assert (partial / "core.mlpackage").is_dir()  # the half-written package is there...
    assert not (root / key.entry_name).exists()  # ...but never under the entry's name
    assert find_package(key, root) is None and list_entries(root) == []
    shutil.copytree(partial, root / key.entry_name)  # even if it were, it has no manifest
    assert validate_entry(root / key.entry_name, key) is not None
    with pytest.raises(Boom):  # the next run rebuilds, cleaning up first
        ensure_package(key, _boom, root=root)
    assert list(root.glob(".tmp-*")) == [] and not (root / key.entry_name).exists()


_RACING_CHILD = _CONVERTED_ALREADY + textwrap.dedent("""
    import json, time
    from engine.coreml.convert import ConvertOptions, ConvertProgress
    from engine.coreml.cache import ensure_model_packages
    from engine.store import resolve_model

    root, repo, flag = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    role = sys.argv[4]
    events = []

    def progress(event):
        events.append(event.message)
        if role == "waiter" and event.message.startswith("Waiting"):
            flag.touch()  # tell the converter that we are blocked on its lock
        if role == "converter" and event.stage == "save":
            deadline = time.monotonic() + 240
            while not flag.exists() and time.monotonic() < deadline:
                time.sleep(0.05)  # keep converting until the other process waits

    [package] = ensure_model_packages(resolve_model("htdemucs_6s", repo),
                                      ConvertOptions(batch=2), root=root, progress=progress)
    print(json.dumps({"hit": package.hit, "entry": str(package.entry),
                      "waited": any(m.startswith("Waiting") for m in events)}))
""")


def test_two_processes_converting_at_once_make_one_good_package(
        tmp_path: Path, tiny_repo: Path, tiny_package: CachedPackage) -> None:
    root, flag = tmp_path / "coreml", tmp_path / "waiting"
    converter = _child(_RACING_CHILD, root, tiny_repo, flag, "converter", tiny_package.package)
    deadline = time.monotonic() + 240
    while not list(root.glob(".tmp-*")) and converter.poll() is None:
        assert time.monotonic() < deadline, "the first process never started converting"
        time.sleep(0.1)
    waiter = _child(_RACING_CHILD, root, tiny_repo, flag, "waiter", tiny_package.package)
    results = []
    for child in (converter, waiter):
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    first, second = results
    assert (first["hit"], second["hit"], second["waited"]) == (False, True, True)
    assert first["entry"] == second["entry"]
    entry = Path(first["entry"])
    assert validate_entry(entry) is None
    assert [p for p in root.iterdir() if p.is_dir()] == [entry]  # no temp dirs left


def test_clear_skips_an_entry_being_converted(cache_copy: tuple[Path, CacheKey]) -> None:
    root, key = cache_copy
    lock = root / f".{key.entry_name}.lock"
    with entry_lock(lock) as held:
        assert held
        removed, busy = clear_cache(root)
        assert removed == [] and busy == [root / key.entry_name]
    removed, busy = clear_cache(root)
    assert [p for p, _ in removed] == [root / key.entry_name] and busy == []
    assert removed[0][1] > 1_000_000 and list(root.iterdir()) == []


def test_a_cancelled_conversion_leaves_nothing(tmp_path: Path, tiny_repo: Path) -> None:
    root, cancel = tmp_path / "coreml", threading.Event()
    resolved = resolve_model("htdemucs_6s", tiny_repo)
    with pytest.raises(Cancelled):
        ensure_model_packages(resolved, root=root, cancel=cancel,
                              progress=lambda event: cancel.set())  # at the first event
    assert [p for p in root.iterdir() if p.is_dir()] == []


def test_waiting_for_a_lock_can_be_cancelled(tmp_path: Path) -> None:
    lock, cancel = tmp_path / ".x.lock", threading.Event()
    waits: list[bool] = []
    with entry_lock(lock):
        cancel.set()
        with pytest.raises(Cancelled), entry_lock(lock, cancel=cancel,
                                                  on_wait=lambda: waits.append(True)):
            pass
        with entry_lock(lock, blocking=False) as held:
            assert held is False
    assert waits == [True]


@pytest.mark.parametrize("manifest", [
    {"format": 1, "files": {}},  # no key
    {"format": 1, "key": {"checkpoint_sha256": "ab", "model": "htdemucs"},
     "files": {"model.mlpackage/x": {"bytes": "12", "sha256": "00"}}},  # a size as text
    {"format": 1, "key": [], "files": []},
    {"format": 1, "key": {"checkpoint_sha256": "ab", "model": "htdemucs"}, "files": {},
     "package_bytes": "a lot"},
])
def test_a_hand_edited_manifest_is_reported_not_a_crash(
        manifest: dict, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main
    from engine.coreml.cache import cache_root, list_entries

    entry = cache_root() / "htdemucs-edited"
    entry.mkdir(parents=True)
    (entry / MANIFEST).write_text(json.dumps(manifest))
    [info] = list_entries()
    assert info.problem is not None and info.problem.startswith("a damaged manifest")
    assert main(["models", "list"]) == 0
    assert main(["models", "verify"]) == 1
    out = capsys.readouterr().out
    assert "htdemucs-edited: a damaged manifest" in out and "Traceback" not in out
