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
