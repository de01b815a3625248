"""Helpers for tests that run the app as a real process (`python -m app`, offscreen), and the
uninterrupted reference a resumed separation must equal bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from app.filelock import held_elsewhere
from app.instance import LOCK_NAME
from engine.stembuffers import StemBuffers, read_index

ROOT = Path(__file__).resolve().parents[2]
START_S = 90  # a cold start on a busy 2-core machine: Python, Qt, the window


def app_environment(home: Path, repo: Path, config: Path,
                    segment: float | None = None) -> dict[str, str]:
    """The app's own data folder, the tiny models, its own settings (XDG_CONFIG_HOME);
    `segment` (seconds) makes more, shorter chunks: more checkpoints in a short song."""
    if segment is not None:
        from PySide6.QtCore import QSettings

        store = QSettings(str(config / "Demixer" / "Demixer.conf"), QSettings.Format.IniFormat)
        store.setValue("separation/segment", float(segment))
        store.sync()
    return dict(os.environ, DEMIXER_HOME=str(home), DEMIXER_MODEL_REPO=str(repo),
                QT_QPA_PLATFORM="offscreen", XDG_CONFIG_HOME=str(config),
                PYTHONPATH=str(ROOT), DEMIXER_CHECKPOINT_EVERY_S="0")  # see below


def start_app(env: dict[str, str], *files: Path) -> subprocess.Popen[str]:
    """`python -m app FILE...` (what `demixer FILE...` runs), once it holds the app lock."""
    process = subprocess.Popen([sys.executable, "-m", "app", *map(str, files)], env=env,
                               text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               cwd=ROOT)
    lock = Path(env["DEMIXER_HOME"]) / LOCK_NAME
    deadline = time.monotonic() + START_S
    while not held_elsewhere(lock):
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "the app did not start"
        time.sleep(0.2)
    return process


# Tests that interrupt a separation have its worker checkpoint after every chunk (engine.
# stembuffers), so a checkpoint part of the way through is there to find before the end.


def wait_for_checkpoint(home: Path, process: subprocess.Popen[str] | None = None,
                        timeout_s: float = 120, pause: Callable[[], object] | None = None
                        ) -> tuple[Path, dict[str, Any]]:
    """The library folder of the separation running under `home` once its stems hold a
    checkpoint part of the way through: (folder, its stems.json). `pause` waits between
    looks (in-process windows: `qtbot.wait`, so that Qt's events run)."""
    deadline = time.monotonic() + timeout_s
    while True:
        for stems in sorted((home / "library").glob("*/stems")):
            info = read_index(stems)
            if info and "resume" in info and 0 < info["ready_frames"] < info["frames"]:
                return stems.parent, info
        if process is not None:
            assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "no checkpoint part of the way through"
        (pause or (lambda: time.sleep(0.05)))()


def reference_stems(song: Path, record: dict[str, Any], key: Any, workdir: Path) -> np.ndarray:
    """(S, C, N) stems of one uninterrupted run of `song` as the app's worker runs it
    (`app.protocol.build`, its thread count), with the shift offsets the interrupted run
    recorded: what a resume must give bit for bit."""
    import dataclasses

    import torch

    from app.protocol import build
    from app.worker import separation_threads
    from engine.job import SeparationJob

    threads = torch.get_num_threads()
    torch.set_num_threads(separation_threads())
    try:
        separator = build(key)
        separator.options = dataclasses.replace(
            separator.options, shift_offsets=tuple(record["resume"]["offsets"]))
        job = SeparationJob(song, separator, stems_dir=workdir / "reference", resume=False)
        result = job.run()
        assert result.ok, result.error
    finally:
        torch.set_num_threads(threads)
    return read_stems(workdir / "reference")


def read_stems(folder: Path) -> np.ndarray:
    stems = StemBuffers.open(folder)
    try:
        return np.stack([stems.read(s, 0, stems.frames) for s in stems.sources])
    finally:
        stems.close()
