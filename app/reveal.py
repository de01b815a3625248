"""Reveal a file in Finder (or the platform's file manager) without blocking the GUI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PySide6.QtCore import QUrl
from PySide6.QtGui import QDesktopServices


def reveal(path: Path) -> None:
    path = Path(path)
    if sys.platform == "darwin":  # pragma: no cover - macOS: select the file in Finder
        subprocess.Popen(["open", "-R", str(path)])
    elif sys.platform == "win32":  # pragma: no cover
        subprocess.Popen(["explorer", f"/select,{path}"])
    else:
        folder = path if path.is_dir() else path.parent
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))
