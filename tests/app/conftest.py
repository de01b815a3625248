"""GUI test setup: offscreen Qt, isolated settings, helpers (the QApplication class is chosen
in tests/conftest.py, for every test that makes one)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before anything imports Qt

import shutil  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PySide6.QtCore import QSettings  # noqa: E402

from app.library import Library  # noqa: E402
from app.mainwindow import MainWindow  # noqa: E402
from app.settings import Settings  # noqa: E402
from tests.app.helpers import RATE, make_entry, stems_audio  # noqa: E402
from tests.conftest import seed_onnx_cache  # noqa: E402
from tests.engine.audio_files import sine_mix, write_wav  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_qsettings(tmp_path: Path) -> None:
    """Settings made without an explicit store (e.g. by `run_app`) land in a temp folder."""
    for fmt in (QSettings.Format.NativeFormat, QSettings.Format.IniFormat):
        QSettings.setPath(fmt, QSettings.Scope.UserScope, str(tmp_path / "qsettings"))


class Asked:
    """Stands in for `MainWindow.ask` (a modal question would block the test): answers by
    the question's title from `answers`; any other question fails the test."""

    def __init__(self) -> None:
        self.answers: dict[str, str] = {}
        self.questions: list[tuple[str, str, list[str]]] = []
        self.unexpected: list[str] = []

    def __call__(self, title: str, text: str, buttons: list[str],
                 default: str | None = None) -> str:
        self.questions.append((title, text, list(buttons)))
        if title not in self.answers:
            self.unexpected.append(f"{title}: {text}")
            return ""
        assert self.answers[title] in buttons, (self.answers[title], buttons)
        return self.answers[title]


@pytest.fixture(autouse=True)
def asked(monkeypatch: pytest.MonkeyPatch) -> Iterator[Asked]:
    """Every question the window asks, answered without a person (see Asked)."""
    recorder = Asked()
    monkeypatch.setattr(MainWindow, "ask", recorder)
    yield recorder
    assert not recorder.unexpected, f"unexpected questions: {recorder.unexpected}"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))


@pytest.fixture(scope="session")
def tiny_calibration(tiny_repo: Path, tiny_onnx_root: Path,
                     tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real calibration of the tiny htdemucs_6s on this machine, made once per session."""
    from engine.calibrate import calibrate
    from engine.store import load_model, resolve_model

    home = tmp_path_factory.mktemp("calibrated-home")
    seed_onnx_cache(tiny_onnx_root, home)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEMIXER_HOME", str(home))
        resolved = resolve_model("htdemucs_6s", tiny_repo)
        calibrate(load_model(resolved), resolved)
    return home / "calibration"


@pytest.fixture
def uncalibrated_repo(tiny_repo: Path, tiny_onnx_root: Path,
                      monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny models, on a machine where none has been calibrated yet (a first run; the
    ONNX export the OpenVINO and ONNX Runtime candidates need is there already: exporting
    has its own tests)."""
    from engine.store import data_dir

    monkeypatch.setenv("DEMIXER_MODEL_REPO", str(tiny_repo))
    seed_onnx_cache(tiny_onnx_root, data_dir())
    return tiny_repo


@pytest.fixture
def model_repo(uncalibrated_repo: Path, tiny_calibration: Path) -> Path:
    """The tiny models, htdemucs_6s already calibrated here (as from the second run on: the
    first run's calibration has its own tests, tests/app/test_calibration.py)."""
    from engine.store import data_dir

    shutil.copytree(tiny_calibration, data_dir() / "calibration", dirs_exist_ok=True)
    return uncalibrated_repo


@pytest.fixture
def make_window(qtbot, settings: Settings) -> Iterator:  # type: ignore[no-untyped-def]
    """Windows over the test's settings and DEMIXER_HOME; shut down after the test."""
    made: list[MainWindow] = []

    def make(store: Settings | None = None,
             size: tuple[int, int] | None = (1200, 760)) -> MainWindow:
        window = MainWindow(store or settings, Library())
        qtbot.addWidget(window)
        if size is not None:
            window.resize(*size)
        window.show()
        made.append(window)
        return window

    yield make
    for window in made:
        window.shutdown()


@pytest.fixture
def window(make_window) -> MainWindow:  # type: ignore[no-untyped-def]
    return make_window()


@pytest.fixture
def song(tmp_path: Path) -> Path:
    """Four seconds of stereo sines at 44.1 kHz: one chunk for the tiny model."""
    return write_wav(tmp_path / "song.wav", sine_mix(4.0, 44100, amplitude=0.4), 44100)


@pytest.fixture
def stems(request: pytest.FixtureRequest) -> dict[str, np.ndarray]:
    """Four stems of music-like audio, `SECONDS` long (the test module's, else 3)."""
    return stems_audio(getattr(request.module, "SECONDS", 3) * RATE)


@pytest.fixture
def shown(make_window, stems):  # type: ignore[no-untyped-def]
    """A window showing a finished four-stem song from the library."""
    entry = make_entry(Library(), "Song", stems)
    window = make_window()
    window.show_entry(entry)
    assert window.track is not None
    return window, entry
