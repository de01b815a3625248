"""engine.store: resolution order, verification before unpickling, downloads, loading.

Official checkpoints cannot be fetched here, so "official" files are tiny random-weight
checkpoints from make_test_model, and the catalogue entry is patched to carry their names and
SHA-256; downloads come from the loopback FileServer through DEMIXER_DOWNLOAD_ROOT.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from demucs.apply import BagOfModels
from demucs.pretrained import get_model

from engine import catalogue, download, store
from engine.catalogue import CheckpointEntry, ModelEntry
from engine.download import DownloadProgress
from engine.errors import ChecksumError, DemixerError, ModelUnavailableError
from engine.store import checkpoints_dir, data_dir, load_model, model_status, resolve_model
from engine.testmodel import make_test_model
from tests.engine.test_download import FileServer

SIX = "htdemucs_6s"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    """A loopback file server that DEMIXER_DOWNLOAD_ROOT points at (so any download is seen)."""
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(download, "RETRY_DELAY_S", 0.0)
    srv = FileServer().start()
    monkeypatch.setenv(store.ENV_DOWNLOAD_ROOT, srv.root + "/")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def six(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three tiny htdemucs_6s repos with different weights: for --repo, env and data dir."""
    repos = {}
    for key, seed in (("repo", 11), ("env", 12), ("data", 13)):
        repos[key] = tmp_path_factory.mktemp(f"six-{key}")
        make_test_model(SIX, repos[key], seed=seed, tiny=True)
    return repos


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _checkpoints(repo: Path, name: str) -> list[Path]:
    signatures = yaml.safe_load((repo / f"{name}.yaml").read_text())["models"]
    return [next(repo.glob(f"{sig}-*.th")) for sig in signatures]


def _patch_catalogue(monkeypatch: pytest.MonkeyPatch, server: FileServer, name: str,
                     files: list[Path], full_digest: bool = True) -> ModelEntry:
    """Make the catalogue's `name` point at `files` (served by `server`) instead of Meta's."""
    real = catalogue.get_entry(name)
    checkpoints = []
    for ckpt, path in zip(real.checkpoints, files, strict=True):
        digest = _sha(path)
        checkpoints.append(CheckpointEntry(
            signature=ckpt.signature, file=path.name, url=server.url(path.name),
            bytes=path.stat().st_size if full_digest else None,
            sha256=digest if full_digest else None, sha256_prefix=digest[:8]))
        server.files[path.name] = path.read_bytes()
    entry = dataclasses.replace(real, checkpoints=tuple(checkpoints))
    monkeypatch.setattr(store, "get_entry",
                        lambda n: entry if n == name else catalogue.get_entry(n))
    return entry


def test_data_dir_follows_demixer_home() -> None:
    home = Path(os.environ["DEMIXER_HOME"])
    assert data_dir() == home
    assert checkpoints_dir() == home / "models" and checkpoints_dir().is_dir()


def test_data_dir_defaults_to_platformdirs(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    calls: list[tuple[Any, ...]] = []

    def fake_user_data_dir(*args: Any, **kwargs: Any) -> str:
        calls.append((args, kwargs))
        return str(tmp_path / "Application Support" / "Demixer")

    monkeypatch.delenv("DEMIXER_HOME")
    monkeypatch.setattr(store.platformdirs, "user_data_dir", fake_user_data_dir)
    assert data_dir() == tmp_path / "Application Support" / "Demixer"
    assert data_dir().is_dir()  # created on demand
    assert calls[0] == (("Demixer",), {"appauthor": False})


def test_repo_beats_env_beats_data_dir(six: dict[str, Path], server: FileServer,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    official = _checkpoints(six["data"], SIX)
    _patch_catalogue(monkeypatch, server, SIX, official)
    shutil.copy(official[0], checkpoints_dir())
    monkeypatch.setenv("DEMIXER_MODEL_REPO", str(six["env"]))

    by_repo = resolve_model(SIX, repo=six["repo"])
    assert by_repo.origin == "repo" and by_repo.checkpoints[0].parent == six["repo"]
    by_env = resolve_model(SIX)
    assert by_env.origin == "env" and by_env.checkpoints[0].parent == six["env"]
    monkeypatch.delenv("DEMIXER_MODEL_REPO")
    by_data = resolve_model(SIX)
    assert by_data.origin == "data" and by_data.checkpoints[0].parent == checkpoints_dir()

    for resolved in (by_repo, by_env, by_data):
        assert resolved.sha256 == (_sha(resolved.checkpoints[0]),)
        assert resolved.weights is None and resolved.segment is None
    assert len({r.sha256 for r in (by_repo, by_env, by_data)}) == 3
    assert server.requests == []


@pytest.mark.parametrize("how", ["repo", "env"])
def test_local_repo_without_the_model_is_an_error(how: str, server: FileServer, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "my-models"
    empty.mkdir()
    repo = None
    if how == "env":
        monkeypatch.setenv("DEMIXER_MODEL_REPO", str(empty))
    else:
        repo = empty
    with pytest.raises(ModelUnavailableError) as err:
        resolve_model(SIX, repo=repo)
    message = str(err.value)
    assert str(empty) in message and "\n" not in message
    assert "htdemucs_6s.yaml" in message and "5c90dfd2-34c22ccb.th" in message
    assert ("--repo" if how == "repo" else "DEMIXER_MODEL_REPO") in message
    assert server.requests == []  # never a silent download


def test_missing_repo_folder_and_missing_bag_member(tiny_repo: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        resolve_model(SIX, repo=tmp_path / "nowhere")
    shutil.copy(tiny_repo / "htdemucs_ft.yaml", tmp_path)
    with pytest.raises(ModelUnavailableError, match="f7e0c4bc") as err:
        resolve_model("htdemucs_ft", repo=tmp_path)
    assert str(tmp_path) in str(err.value)


def test_custom_model_in_a_local_repo(six: dict[str, Path], tmp_path: Path) -> None:
    source = _checkpoints(six["repo"], SIX)[0]
    custom = tmp_path / f"mymix-{_sha(source)[:8]}.th"  # a single checkpoint, no yaml
    shutil.copy(source, custom)
    resolved = resolve_model("mymix", repo=tmp_path)
    assert resolved.checkpoints == (custom,) and resolved.weights is None
    bag = load_model(resolved)
    assert isinstance(bag, BagOfModels) and len(bag.models) == 1


def test_unknown_name_outside_a_local_repo_lists_known_names() -> None:
    with pytest.raises(DemixerError) as err:
        resolve_model("mymix")
    assert "htdemucs_6s" in str(err.value) and "htdemucs_ft" in str(err.value)


def test_missing_model_without_download_names_the_folder(server: FileServer) -> None:
    with pytest.raises(ModelUnavailableError) as err:
        resolve_model(SIX, download=False)
    assert str(checkpoints_dir()) in str(err.value)
    assert "5c90dfd2-34c22ccb.th" in str(err.value)
    assert server.requests == []


def test_download_into_data_dir(six: dict[str, Path], server: FileServer,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    official = _checkpoints(six["data"], SIX)[0]
    _patch_catalogue(monkeypatch, server, SIX, [official])
    reports: list[DownloadProgress] = []
    first = resolve_model(SIX, progress=reports.append)
    assert first.origin == "download"
    assert first.checkpoints == (checkpoints_dir() / official.name,)
    assert first.sha256 == (_sha(official),)
    assert reports[-1].done == official.stat().st_size
    assert not list(checkpoints_dir().glob("*.part"))

    again = resolve_model(SIX)
    assert again.origin == "data" and again.sha256 == first.sha256
    assert len(server.requests) == 1
    assert isinstance(load_model(again), BagOfModels)
    # The NAME.yaml we write makes the folder a repo demucs itself can load from.
    assert len(get_model(SIX, repo=checkpoints_dir()).models) == 1


def test_prefix_only_bag_downloads(tiny_repo: Path, server: FileServer,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # htdemucs_ft publishes only the 8-hex prefixes (and no sizes): those are checked.
    files = _checkpoints(tiny_repo, "htdemucs_ft")
    _patch_catalogue(monkeypatch, server, "htdemucs_ft", files, full_digest=False)
    resolved = resolve_model("htdemucs_ft")
    assert resolved.origin == "download" and len(resolved.checkpoints) == 4
    assert resolved.sha256 == tuple(_sha(f) for f in files)
    assert resolved.weights == catalogue.get_entry("htdemucs_ft").weights
    bag = yaml.safe_load((checkpoints_dir() / "htdemucs_ft.yaml").read_text())
    assert bag["models"] == ["f7e0c4bc", "d12395a8", "92cfc3b6", "04573f0d"]


def test_corrupt_data_file_is_replaced_once(six: dict[str, Path], server: FileServer,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    official = _checkpoints(six["data"], SIX)[0]
    _patch_catalogue(monkeypatch, server, SIX, [official])
    local = checkpoints_dir() / official.name
    local.write_bytes(b"\0" * official.stat().st_size)  # right size, wrong bytes

    with pytest.raises(ChecksumError, match="delete it") as err:
        resolve_model(SIX, download=False)
    assert official.name in str(err.value) and str(checkpoints_dir()) in str(err.value)
    assert local.exists() and server.requests == []

    resolved = resolve_model(SIX)
    assert resolved.origin == "download" and local.read_bytes() == official.read_bytes()
    assert len(server.requests) == 1


def test_corrupt_download_is_not_retried_forever(six: dict[str, Path], server: FileServer,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    official = _checkpoints(six["data"], SIX)[0]
    _patch_catalogue(monkeypatch, server, SIX, [official])
    server.files[official.name] = b"\1" * official.stat().st_size
    (checkpoints_dir() / official.name).write_bytes(b"junk")
    with pytest.raises(ChecksumError):
        resolve_model(SIX)
    assert len(server.requests) == 1
    assert not (checkpoints_dir() / official.name).exists()


def test_bad_checksum_is_caught_before_unpickling(six: dict[str, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    unpickled: list[object] = []

    def forbidden_load(*args: Any, **kwargs: Any) -> None:
        unpickled.append(args)
        raise AssertionError("torch.load must not run on an unverified file")

    monkeypatch.setattr(torch, "load", forbidden_load)
    shutil.copy(_checkpoints(six["repo"], SIX)[0], tmp_path / "5c90dfd2-deadbeef.th")
    (tmp_path / f"{SIX}.yaml").write_text("models: ['5c90dfd2']\n")
    with pytest.raises(ChecksumError) as err:
        load_model(resolve_model(SIX, repo=tmp_path))
    assert "5c90dfd2-deadbeef.th" in str(err.value) and str(tmp_path) in str(err.value)

    # A file swapped between resolve_model and load_model is refused as well.
    good = tmp_path / "good"
    shutil.copytree(six["repo"], good)
    resolved = resolve_model(SIX, repo=good)
    with open(resolved.checkpoints[0], "ab") as f:
        f.write(b"tampered")
    with pytest.raises(ChecksumError, match="changed after"):
        load_model(resolved)
    assert unpickled == []


def test_load_model_returns_bags(tiny_repo: Path) -> None:
    six_bag = load_model(resolve_model(SIX, repo=tiny_repo))
    assert isinstance(six_bag, BagOfModels) and not six_bag.training
    assert len(six_bag.models) == 1
    assert six_bag.sources == catalogue.get_entry(SIX).sources
    assert six_bag.weights == [[1.0] * 6]

    ft = catalogue.get_entry("htdemucs_ft")
    ft_bag = load_model(resolve_model("htdemucs_ft", repo=tiny_repo))
    assert isinstance(ft_bag, BagOfModels) and not ft_bag.training
    assert len(ft_bag.models) == 4
    assert ft_bag.sources == ft.sources
    assert ft_bag.weights == ft.weights


def test_bag_segment_from_yaml(six: dict[str, Path], tmp_path: Path) -> None:
    shutil.copy(_checkpoints(six["repo"], SIX)[0], tmp_path)
    (tmp_path / "short.yaml").write_text("models: ['5c90dfd2']\nsegment: 4\n")
    resolved = resolve_model("short", repo=tmp_path)
    assert resolved.segment == 4.0
    bag = load_model(resolved)
    assert isinstance(bag, BagOfModels)
    assert all(member.segment == 4.0 for member in bag.models)


def test_model_status(six: dict[str, Path], server: FileServer,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    official = _checkpoints(six["data"], SIX)[0]
    _patch_catalogue(monkeypatch, server, SIX, [official])
    (checkpoints_dir() / (official.name + ".part")).write_bytes(b"x" * 10)
    before = model_status(SIX)
    assert not before.complete and before.folder == checkpoints_dir()
    assert before.checkpoints[0].partial_bytes == 10
    assert before.checkpoints[0].bytes_on_disk is None
    (checkpoints_dir() / (official.name + ".part")).unlink()
    resolve_model(SIX)
    after = model_status(SIX)
    assert after.complete and after.checkpoints[0].bytes_on_disk == official.stat().st_size


@pytest.mark.parametrize("where", ["file", "under_a_file"])
@pytest.mark.parametrize("command", [["separate", "song.wav", "--backend", "torch"],
                                     ["models", "list"], ["doctor"]])
def test_an_unusable_data_folder_is_one_sentence(where: str, command: list[str],
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    blocker = tmp_path / "home"
    blocker.write_text("a file where the data folder should be")
    home = blocker if where == "file" else blocker / "sub"
    monkeypatch.setenv("DEMIXER_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    assert main(command) == 1
    captured = capsys.readouterr()
    [line] = captured.err.strip().splitlines()
    assert line.startswith(f"demixer: The data folder {home} cannot be ")
    assert line.endswith("set DEMIXER_HOME to a writable folder.")


class _Payload:
    """Unpickling this runs code: it creates `marker` (the attack a checkpoint could carry)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("how", ["repo", "env"])
def test_a_malicious_checkpoint_runs_nothing(how: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np
    import soundfile as sf

    from engine.cli import main

    repo, marker = tmp_path / "repo", tmp_path / "pwned"
    repo.mkdir()
    evil = repo / "htdemucs.th"
    torch.save({"klass": _Payload(marker), "args": (), "kwargs": {}, "state": {}}, evil)
    torch.load(evil, weights_only=False)  # the payload is live: an unrestricted load runs it
    assert marker.exists()
    marker.unlink()
    song = tmp_path / "song.wav"
    sf.write(song, np.zeros((44100, 2), np.float32), 44100)
    args = ["separate", str(song), "-n", "htdemucs", "-o", str(tmp_path / "out"),
            "--backend", "torch"]
    if how == "repo":
        args += ["--repo", str(repo)]
    else:
        monkeypatch.setenv("DEMIXER_MODEL_REPO", str(repo))
    assert main(args) == 1
    assert not marker.exists()
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"demixer: Checkpoint htdemucs.th in {repo} was not loaded: it asks "
                           "to run code (")


def test_checkpoints_load_with_weights_only(tiny_repo: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Every load goes through torch.load(weights_only=True); demucs's own loader (which
    passes weights_only=False) is never asked to read a file."""
    calls: list[object] = []
    real_load = torch.load

    def load(*args: object, **kwargs: object) -> object:
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "load", load)
    bag: Any = store.load_model(store.resolve_model("htdemucs_ft", tiny_repo))
    assert len(bag.models) == 4 and calls == [True] * 4


def test_models_download_and_list(six: dict[str, Path], server: FileServer,
                                  monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    official = _checkpoints(six["data"], SIX)[0]
    _patch_catalogue(monkeypatch, server, SIX, [official])
    monkeypatch.setenv("DEMIXER_MODEL_REPO", str(six["env"]))  # download ignores it
    assert main(["models", "download", SIX]) == 0
    assert main(["models", "download", SIX]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{SIX}: downloaded, verified, in {checkpoints_dir()}",
                   f"{SIX}: already there, verified, in {checkpoints_dir()}"]
    assert len(server.requests) == 1
    assert main(["models", "download", "htdemucs_9s"]) == 1
    assert capsys.readouterr().err.strip().startswith("demixer: Unknown model 'htdemucs_9s'")


def test_models_list_shows_a_model_from_the_env_repo(six: dict[str, Path],
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    assert main(["models", "list"]) == 0
    before = next(line for line in capsys.readouterr().out.splitlines()
                  if line.startswith(SIX))
    assert " no " in f" {before} "
    monkeypatch.setenv("DEMIXER_MODEL_REPO", str(six["env"]))
    assert main(["models", "list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(SIX))
    assert "yes (from $DEMIXER_MODEL_REPO)" in row


def test_verify_says_plainly_what_it_could_not_check(six: dict[str, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(_checkpoints(six["repo"], SIX)[0], repo / f"{SIX}.th")  # no hash in the name
    assert main(["models", "verify", "--repo", str(repo)]) == 0
    out = capsys.readouterr().out
    assert (f"{SIX}: {SIX}.th: UNVERIFIED: a local file whose name carries no hash "
            "(custom weights)") in out
