"""Shared fixtures: random-weight models from `make-test-model`, isolated user data dirs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from engine.testmodel import make_test_model

# No test needs a screen; without this, creating the QApplication aborts on a headless machine.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_macos = pytest.mark.skip(reason="needs macOS 13+ (CoreML prediction / Cocoa)")
    for item in items:
        if "macos" in item.keywords and sys.platform != "darwin":
            item.add_marker(skip_macos)


@pytest.fixture(scope="session")
def qapp_cls() -> type:
    """pytest-qt makes the one QApplication of the session from this: the app's own subclass,
    whichever test needs it first (a plain QApplication would fail the app's tests later)."""
    from app.main import DemixerApplication

    return DemixerApplication


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test touches the real per-user data dir, model repo or settings."""
    home = tmp_path_factory.mktemp("demixer-home")
    monkeypatch.setenv("DEMIXER_HOME", str(home))
    monkeypatch.setenv("DEMIXER_ALLOW_HTTP", "1")  # the tests' loopback servers speak http
    monkeypatch.delenv("DEMIXER_MODEL_REPO", raising=False)
    return home


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demucs-style local repo with tiny random-weight htdemucs_6s, htdemucs, htdemucs_ft."""
    repo = tmp_path_factory.mktemp("tiny-repo")
    for name in ("htdemucs_6s", "htdemucs", "htdemucs_ft"):
        make_test_model(name, repo, seed=1, tiny=True)
    return repo


@pytest.fixture(scope="session")
def real_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real htdemucs_6s architecture (42 M parameters) with random weights."""
    repo = tmp_path_factory.mktemp("real-repo")
    make_test_model("htdemucs_6s", repo, seed=2, tiny=False)
    return repo


def _session_export(tmp_path_factory: pytest.TempPathFactory, repo: Path, label: str) -> Path:
    """A cache root (engine.onnx_cache layout) holding the export of `repo`'s htdemucs_6s."""
    from engine.onnx_cache import ensure_model_onnx
    from engine.store import resolve_model

    root = tmp_path_factory.mktemp(f"onnx-{label}")
    [export] = ensure_model_onnx(resolve_model("htdemucs_6s", repo), root=root)
    assert not export.hit
    return root


@pytest.fixture(scope="session")
def tiny_onnx_root(tmp_path_factory: pytest.TempPathFactory, tiny_repo: Path) -> Path:
    """The tiny htdemucs_6s exported to ONNX once per session (engine.onnx_cache layout)."""
    return _session_export(tmp_path_factory, tiny_repo, "tiny")


@pytest.fixture(scope="session")
def real_onnx_root(tmp_path_factory: pytest.TempPathFactory, real_repo: Path) -> Path:
    """The real htdemucs_6s architecture exported to ONNX once per session (~20 s)."""
    return _session_export(tmp_path_factory, real_repo, "real")


def seed_onnx_cache(session_root: Path, home: Path) -> Path:
    """Copy a session's exports into a test's data dir (so the CLI finds them: no export)."""
    import shutil

    target = home / "onnx"
    shutil.copytree(session_root, target, dirs_exist_ok=True)
    return target
