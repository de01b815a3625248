"""One app per user and data folder: a second `demixer FILE...` hands its files to the open
window and exits, instead of opening a second window on the same library (which would tidy
away the first one's running separation).

The first instance holds `data_dir()/app.lock` (`app.filelock`: the kernel drops it if the
process dies) and listens on a `QLocalServer` whose name is per user and per data folder.
A later one finds the lock held, connects, sends one JSON line ({"files": [absolute paths]})
and waits for "ok". A socket file left by a crashed instance is removed by the next one that
gets the lock (then nobody else can be listening). Needs only QtCore/QtNetwork: the hand-off
never loads torch or opens a window.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QObject
from PySide6.QtNetwork import QLocalServer, QLocalSocket

from app.filelock import FileLock
from engine.store import data_dir

LOCK_NAME = "app.lock"
CONNECT_WAIT_S = 15.0  # the first instance may still be starting up (imports, window)
REPLY_WAIT_MS = 10000


def server_name(folder: Path | None = None) -> str:
    """The local socket's name: per user (uid) and per data folder (its own library)."""
    where = str((folder or data_dir()).resolve())
    user = str(os.getuid()) if hasattr(os, "getuid") else os.environ.get("USERNAME", "")
    digest = hashlib.sha256(f"{user}\0{where}".encode()).hexdigest()[:16]
    return f"demixer-{user}-{digest}"


def claim() -> FileLock | None:
    """The lock that makes this process the app; None if another instance holds it."""
    folder = data_dir()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return FileLock(folder / LOCK_NAME)
    except BlockingIOError:
        return None


def hand_off(files: list[str], wait_s: float = CONNECT_WAIT_S) -> str | None:
    """Give `files` to the running instance (which comes to the front); None when it took
    them, else one sentence saying why not."""
    message = json.dumps({"files": [os.path.abspath(f) for f in files]}) + "\n"
    deadline = time.monotonic() + wait_s
    socket = QLocalSocket()
    while True:
        socket.connectToServer(server_name())
        if socket.waitForConnected(1000):
            break
        if time.monotonic() > deadline:
            return (f"Another Demixer is running (it holds {data_dir() / LOCK_NAME}) but "
                    f"does not answer ({socket.errorString()}); quit it and try again.")
        time.sleep(0.2)
    socket.write(message.encode())
    socket.flush()
    socket.waitForBytesWritten(REPLY_WAIT_MS)
    if not socket.canReadLine() and not socket.waitForReadyRead(REPLY_WAIT_MS):
        return "The running Demixer did not confirm that it took the files."
    reply = bytes(socket.readLine().data()).strip()
    socket.disconnectFromServer()
    return None if reply == b"ok" else f"The running Demixer refused the files ({reply!r})."


class InstanceServer(QObject):
    """The first instance's end: files from later ones go to `on_files` (GUI thread)."""

    def __init__(self, on_files: Callable[[list[str]], None],
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.on_files = on_files
        self.server = QLocalServer(self)
        self.server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        self.server.newConnection.connect(self._accept)

    def listen(self) -> bool:
        """Start listening; call only while holding the lock (see `claim`)."""
        name = server_name()
        if self.server.listen(name):
            return True
        QLocalServer.removeServer(name)  # a socket file left by a crashed instance
        return self.server.listen(name)

    def _accept(self) -> None:
        while self.server.hasPendingConnections():
            socket = self.server.nextPendingConnection()
            socket.readyRead.connect(lambda s=socket: self._read(s))
            socket.disconnected.connect(socket.deleteLater)

    def _read(self, socket: QLocalSocket) -> None:
        if not socket.canReadLine():
            return  # the rest of the line is on its way
        try:
            files = json.loads(bytes(socket.readLine().data()).decode("utf-8"))["files"]
            files = [str(f) for f in files]
        except (ValueError, KeyError, TypeError):
            socket.write(b"bad request\n")
            return
        socket.write(b"ok\n")
        socket.flush()
        self.on_files(files)

    def close(self) -> None:
        self.server.close()

