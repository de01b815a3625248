"""Helpers for driving the window in tests: drops, waiting on queue states, pixels."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QImage
from PySide6.QtWidgets import QApplication, QWidget

from app.queue import QueueItem, State

FINISHED = (State.DONE, State.FAILED, State.CANCELLED)


def drop_files(target: QWidget, paths: Iterable[Path]) -> bool:
    """Drag `paths` over `target` and drop them, as Finder does; whether the drag was taken."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    centre = QPoint(target.width() // 2, target.height() // 2)
    buttons, mods = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    with warnings.catch_warnings():  # PySide marks Qt's only constructor as deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        enter = QDragEnterEvent(centre, Qt.DropAction.CopyAction, mime, buttons, mods)
    QApplication.sendEvent(target, enter)
    if not enter.isAccepted():
        return False
    drop = QDropEvent(QPointF(centre), Qt.DropAction.CopyAction, mime, buttons, mods)
    QApplication.sendEvent(target, drop)
    return True


def wait_for(qtbot, item: QueueItem, states: Iterable[State] = FINISHED,  # type: ignore[no-untyped-def]
             timeout_s: float = 60) -> None:
    wanted = tuple(states)
    qtbot.waitUntil(lambda: item.state in wanted, timeout=int(timeout_s * 1000))


def painted_pixels(image: QImage) -> int:
    """How many pixels of an ARGB32 image are not fully transparent."""
    image = image.convertToFormat(QImage.Format.Format_ARGB32)
    data = np.frombuffer(image.constBits(), np.uint32, image.width() * image.height())
    return int(np.count_nonzero(data >> 24))


class StallWatch:
    """A 10 ms timer on the GUI thread that records the gaps between its ticks.

    `worst` is the longest wall-clock gap. `worst_own` subtracts from each gap the time the
    kernel kept the (runnable) GUI thread waiting for a CPU, from Linux's per-thread
    schedstat: on a shared 2-core machine other people's processes can hold both cores for
    hundreds of milliseconds, which says nothing about the app. Everything the app does to
    its GUI thread still counts: work on it, waiting for the GIL, blocking on I/O or locks.
    Elsewhere (no schedstat) `worst_own` is the wall-clock gap.
    """

    def __init__(self, interval_ms: int = 10) -> None:
        import threading

        from PySide6.QtCore import QTimer

        self._stat = Path(f"/proc/self/task/{threading.get_native_id()}/schedstat")
        self.gaps: list[tuple[float, float]] = []  # (wall, own) seconds
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self._last = (0.0, 0.0)

    def _runqueue_s(self) -> float:
        try:
            return int(self._stat.read_text().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            return 0.0

    def start(self) -> None:
        import time

        self._last = (time.perf_counter(), self._runqueue_s())
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()

    def _tick(self) -> None:
        import time

        now, waited = time.perf_counter(), self._runqueue_s()
        wall = now - self._last[0]
        self.gaps.append((wall, max(0.0, wall - (waited - self._last[1]))))
        self._last = (now, waited)

    @property
    def worst(self) -> float:
        return max(g[0] for g in self.gaps)

    @property
    def worst_own(self) -> float:
        return max(g[1] for g in self.gaps)
