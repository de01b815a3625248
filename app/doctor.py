"""What the app adds to `demixer doctor` and `demixer --self-test`, which `engine` may not
look at itself (it never imports Qt, sounddevice or `app`): the audio output devices and
whether the window can open. Qt-free at import; the launcher (`app.launch.main`) hands
`HOST` to `engine.cli.main`.
"""

from __future__ import annotations

import os
import subprocess
import sys

from app.display import NO_DISPLAY_EXIT
from engine.cli import Host

WINDOW_CHECK_FLAG = "--check-display"  # app.display: 0 opens, 3 no display here, else not
WINDOW_CHECK_TIMEOUT_S = 60


def window_probe() -> tuple[int | None, str]:
    """Whether the app's window can open here, asked of a child process (`python -m app
    --check-display`, or the frozen app's own `--check-display`): Qt aborts the process it
    fails in, and doctor and the self-test must not load it. (exit code or None, the child's
    one line.)"""
    if getattr(sys, "frozen", False):
        command = [sys.executable, WINDOW_CHECK_FLAG]
    else:
        command = [sys.executable, "-m", "app", WINDOW_CHECK_FLAG]
    env = dict(os.environ)
    if env.get("QT_QPA_PLATFORM") == "offscreen":  # the self-test's (or the tests') own
        del env["QT_QPA_PLATFORM"]
    try:
        run = subprocess.run(command, capture_output=True, text=True, env=env, check=False,
                             timeout=WINDOW_CHECK_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"the window check did not run ({exc})"
    lines = run.stdout.strip().splitlines()
    if run.returncode in (0, 1, NO_DISPLAY_EXIT) and lines:
        return run.returncode, lines[-1]
    said = next((line for line in run.stderr.splitlines() if line.strip()), "no message")
    return run.returncode, f"opening a window failed (exit code {run.returncode}): {said}"


def check_window() -> str:
    """The app's window can open (or this session has no display, and the libraries the
    window needs are all installed)."""
    from engine.cli.selftest import expect  # numpy: not for every launch

    code, line = window_probe()
    expect(code in (0, NO_DISPLAY_EXIT), line)
    return line


def audio_lines() -> list[str]:
    """`demixer doctor`'s lines on audio output: the devices, the default one starred."""
    try:
        import sounddevice as sd
    except (ImportError, OSError) as exc:  # OSError: the PortAudio library is missing
        return [f"Audio output: unavailable ({exc}); playback in the app needs PortAudio"]
    try:
        devices = sd.query_devices()
        default_out = sd.default.device[1]
    except Exception as exc:  # PortAudio present but failing (no audio server, ...)
        return [f"Audio output: unavailable ({exc})"]
    outputs = [(i, d) for i, d in enumerate(devices) if d["max_output_channels"] > 0]
    if not outputs:
        return ["Audio output devices: none found"]
    return ["Audio output devices:"] + [
        f"  {'*' if i == default_out else ' '} {d['name']} ({d['max_output_channels']} ch, "
        f"{d['default_samplerate']:.0f} Hz)" for i, d in outputs]


def window_lines() -> list[str]:
    """`demixer doctor`'s last line: whether the window can open here."""
    return [f"Window: {window_probe()[1]}"]


HOST = Host(doctor_lines=audio_lines, doctor_last=window_lines,
            self_test_checks=(("window", check_window),))
