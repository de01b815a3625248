"""Starting the app: `run_app(files)` for `demixer [FILE...]` and `python -m app`.

`DemixerApplication` handles QFileOpenEvent, which macOS sends for files dropped on the Dock
icon or opened with the app in Finder (also at launch, before the window exists).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import QEvent, QObject
from PySide6.QtGui import QFileOpenEvent, QIcon
from PySide6.QtWidgets import QApplication

from app.filelock import FileLock
from app.instance import InstanceServer, claim, hand_off
from app.mainwindow import MainWindow
from app.settings import Settings


class DemixerApplication(QApplication):
    def __init__(self, argv: Sequence[str]) -> None:
        super().__init__(list(argv))
        self.setApplicationName("Demixer")
        self.setOrganizationName("Demixer")
        self.setApplicationDisplayName("Demixer")
        icon = Path(__file__).resolve().parents[1] / "resources" / "Demixer.png"
        if icon.is_file():  # from a checkout; the .app bundle has its own .icns
            self.setWindowIcon(QIcon(str(icon)))
        self.window: MainWindow | None = None
        self.pending: list[str] = []

    def event(self, event: QEvent) -> bool:
        if event.type() == QEvent.Type.FileOpen and isinstance(event, QFileOpenEvent):
            self.open_files([event.file()])
            return True
        return super().event(event)

    def open_files(self, paths: list[str]) -> None:
        if self.window is None:
            self.pending += paths
        else:
            self.window.open_paths(paths)

    def set_window(self, window: MainWindow) -> None:
        self.window = window
        pending, self.pending = self.pending, []
        if pending:
            window.open_paths(pending)


def install_file_open_filter(app: QApplication, window: MainWindow) -> QObject:
    """For a QApplication that is not ours (tests): route FileOpen events to `window`."""

    class _Filter(QObject):
        def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802
            if event.type() == QEvent.Type.FileOpen and isinstance(event, QFileOpenEvent):
                window.open_paths([event.file()])
                return True
            return False

    handler = _Filter(app)
    app.installEventFilter(handler)
    return handler


def bring_forward(window: MainWindow, files: list[str]) -> None:
    """Files from a second `demixer FILE...`: show the window on top, then queue them
    (in that order: a question they raise must not end up under the raised window)."""
    if window.isMinimized():
        window.showNormal()
    window.show()
    window.raise_()
    window.activateWindow()
    window.open_paths(files)


def run_app(files: list[str], lock: FileLock | None = None) -> int:
    """Open the window with `files` queued as if dropped; run until it closes. `lock` is
    the app lock (`app.instance.claim`); without it, it is claimed here, and if another
    instance holds it the files go to that one's window instead."""
    lock = lock or claim()
    if lock is None:
        problem = hand_off(files)
        if problem is not None:
            print(f"demixer: {problem}", file=sys.stderr)
        return 0 if problem is None else 1
    app = QApplication.instance()
    if app is None:
        app = DemixerApplication(sys.argv[:1])
    window = MainWindow(Settings())
    if isinstance(app, DemixerApplication):
        app.set_window(window)
    else:
        install_file_open_filter(app, window)  # type: ignore[arg-type]
    server = InstanceServer(lambda paths: bring_forward(window, paths), window)
    if not server.listen():
        print(f"demixer: later `demixer FILE` commands cannot reach this window "
              f"({server.server.errorString()}).", file=sys.stderr)
    window.show()
    # Ctrl+C in the terminal that ran `demixer`, or a SIGTERM: close as ⌘Q would, asking
    # first if songs separate (the 30 Hz timer lets Python see the signal while Qt waits).
    signal.signal(signal.SIGINT, lambda *_: window.request_quit())
    signal.signal(signal.SIGTERM, lambda *_: window.request_quit())
    window.service.client.start()  # the worker warms up (imports, model) while the user looks
    window.open_paths(files)
    try:
        return int(app.exec())
    finally:
        server.close()
        lock.release()
