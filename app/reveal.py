"""Show a file in the platform's file manager (Finder, Explorer, the desktop's own) without
blocking the GUI; when there is none, say so in one sentence instead of failing silently."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

LINUX_OPENERS = ("xdg-open", "gio", "kde-open", "exo-open")


def reveal_title() -> str:
    """The menu/button text for `reveal` on this platform."""
    if sys.platform == "darwin":
        return "Reveal in Finder"
    if sys.platform == "win32":
        return "Show in Explorer"
    return "Show in File Manager"


def _opener(folder: Path) -> list[str] | None:
    """The command that opens `folder` in the desktop's file manager, or None (Linux, BSD)."""
    for name in LINUX_OPENERS:
        found = shutil.which(name)
        if found:
            return [found, "open", str(folder)] if name == "gio" else [found, str(folder)]
    return None


def reveal(path: Path) -> str | None:
    """Show `path` (its folder, with the file selected where the platform can); None when
    a file manager was started, else one sentence saying why not."""
    path = Path(path)
    if sys.platform == "darwin":  # pragma: no cover - macOS: select the file in Finder
        command = ["open", "-R", str(path)]
    elif sys.platform == "win32":  # pragma: no cover
        command = ["explorer", f"/select,{path}"]
    else:
        command = _opener(path if path.is_dir() else path.parent) or []
        if not command:
            return (f"No file manager could be found to show {path} (xdg-open is not "
                    "installed); open the folder yourself.")
    try:
        subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError as err:
        return f"{path} cannot be shown: {command[0]} does not start ({err.strerror or err})."
    return None
