"""`demixer` where no window can open says what to do in one sentence instead of Qt's abort
(exit 134); `--check-display`, `demixer doctor` and the self-test's window check."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import app.display
from app.display import NO_DISPLAY, debian_package, display_problem
from app.doctor import check_window

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = "import sys; from app.launch import main; sys.exit(main(sys.argv[1:]))"
XCB_MISSING = ["libxcb-icccm.so.4", "libxcb-keysyms.so.1"]  # a fresh Debian's, measured

pytestmark = pytest.mark.skipif(sys.platform in ("darwin", "win32"),
                                reason="X11/Wayland only: macOS and Windows always have one")


def _env(**changes: str | None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM", "XDG_SESSION_TYPE"):
        env.pop(name, None)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _launch(song: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", LAUNCH, str(song)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_debian_package_names_follow_the_sonames() -> None:
    assert [debian_package(s) for s in XCB_MISSING] == ["libxcb-icccm4", "libxcb-keysyms1"]
    assert debian_package("libxcb-cursor.so.0") == "libxcb-cursor0"
    assert debian_package("libxkbcommon-x11.so.0") == "libxkbcommon-x11-0"
    assert debian_package("libEGL.so.1") == "libegl1"
    assert debian_package("libglib-2.0.so.0") == "libglib2.0-0"


def test_missing_xcb_libraries_are_named_with_their_packages(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(os, "environ", _env(DISPLAY=":0"))
    monkeypatch.setattr(app.display, "x11_answers", lambda display: True)
    monkeypatch.setattr(app.display, "missing_libraries", lambda plugin: list(XCB_MISSING))
    problem = display_problem()
    assert problem == ("Qt's X11 support needs libxcb-icccm.so.4, libxcb-keysyms.so.1, which "
                       "are not installed: on Debian or Ubuntu run `sudo apt-get install "
                       "libxcb-icccm4 libxcb-keysyms1`")
    monkeypatch.setattr(app.display, "missing_libraries", lambda plugin: [])
    assert display_problem() is None
    monkeypatch.setattr(os, "environ", _env(QT_QPA_PLATFORM="offscreen"))
    assert display_problem() is None  # the person chose a platform without a screen


@pytest.mark.parametrize("display,said", [(None, NO_DISPLAY),
                                          (":87", "the display :87 ($DISPLAY) does not answer: "
                                           "start Demixer from a desktop session (or start "
                                           "that X server first)")])
def test_demixer_without_a_usable_display_says_so_in_one_sentence(  # type: ignore[no-untyped-def]
        song, tmp_path, display: str | None, said: str) -> None:
    run = _launch(song, _env(DISPLAY=display, DEMIXER_HOME=str(tmp_path / "home")))
    assert run.returncode == 1, run.stderr
    assert run.stderr == f"demixer: the window cannot open: {said}.\n"
    assert run.stdout == ""


def test_check_display_reports_the_missing_libraries(tmp_path: Path) -> None:
    """Through the real `python -m app --check-display`, with an `ldd` that reports what a
    fresh Debian lacks (this machine has the libraries)."""
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "ldd").write_text("#!/bin/sh\n" + "".join(
        f'echo "\t{s} => not found"\n' for s in XCB_MISSING))
    (tools / "ldd").chmod(0o755)
    env = _env(PATH=f"{tools}{os.pathsep}{os.environ['PATH']}")
    run = subprocess.run([sys.executable, "-m", "app", "--check-display"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert run.stdout.strip().endswith("`sudo apt-get install libxcb-icccm4 libxcb-keysyms1`.")


def test_doctor_and_the_self_test_check_the_window(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """With no display in this session (as in CI) both say so, and that the libraries the
    window needs are there (tests/run.sh installs them)."""
    from app.launch import main

    for name in ("DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    assert main(["doctor"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line == ("Window: No display in this session ($DISPLAY and $WAYLAND_DISPLAY are "
                    "not set); the libraries Qt's X11 support needs are all installed.")
    assert check_window() == line.removeprefix("Window: ")


@pytest.fixture
def xvfb() -> Iterator[str]:
    """A real X server (Xvfb) on a free display number."""
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb)")
    number = next(n for n in range(90, 200) if not Path(f"/tmp/.X11-unix/X{n}").exists()
                  and not Path(f"/tmp/.X{n}-lock").exists())
    server = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "1024x768x24"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not Path(f"/tmp/.X11-unix/X{number}").exists():
        assert server.poll() is None and time.monotonic() < deadline, "Xvfb did not start"
        time.sleep(0.1)
    yield f":{number}"
    server.terminate()
    server.wait(10)


def test_the_window_opens_on_a_real_x_server(xvfb: str) -> None:
    run = subprocess.run([sys.executable, "-m", "app", "--check-display"],
                         env=_env(DISPLAY=xvfb), cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == "The window can open: Qt platform 'xcb', 1024x768 screen."
