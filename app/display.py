"""Can the window open here? One sentence saying what is missing, instead of Qt's abort.

On Linux Qt aborts the whole process (exit 134) when its platform plugin cannot load: no
display, a display that does not answer, or a system library the plugin needs (on a fresh
Debian: libxcb-icccm4 and libxcb-keysyms1; Qt's own hint names libxcb-cursor0 instead).
`display_problem()` finds those cases before any QGuiApplication exists, without loading Qt's
GUI libraries: environment variables, the display's socket, and `ldd` on the platform plugin
(which lists every library it needs, transitively). It runs at each launch (~50 ms).
`python -m app --check-display` (`check_display_main`) goes further and opens a
QGuiApplication on the chosen platform: run in a subprocess (`demixer doctor`, the
self-test), a Qt abort there cannot take the caller with it. macOS and Windows have no such
failure mode: nothing to check there. Qt-free at import.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

HEADLESS_PLATFORMS = ("offscreen", "minimal", "vnc", "linuxfb", "eglfs", "vkkhrdisplay")
# Debian/Ubuntu package names that do not follow the soname rule (see `debian_package`)
PACKAGE_EXCEPTIONS = {"libglib-2.0.so.0": "libglib2.0-0", "libX11-xcb.so.1": "libx11-xcb1",
                      "libX11.so.6": "libx11-6", "libGL.so.1": "libgl1", "libEGL.so.1": "libegl1",
                      "libOpenGL.so.0": "libopengl0", "libGLX.so.0": "libglx0",
                      "libICE.so.6": "libice6", "libSM.so.6": "libsm6"}
NO_DISPLAY = ("there is no display to open the window on ($DISPLAY and $WAYLAND_DISPLAY are "
              "not set): run Demixer in a desktop session, or separate on the command line "
              "with `demixer separate FILE`")


def debian_package(soname: str) -> str:
    """The Debian/Ubuntu package that ships `soname` (libxcb-icccm.so.4 -> libxcb-icccm4)."""
    if soname in PACKAGE_EXCEPTIONS:
        return PACKAGE_EXCEPTIONS[soname]
    match = re.fullmatch(r"(lib[\w.+-]+?)\.so\.(\d+)(?:\.\d+)*", soname)
    if not match:
        return soname
    name, major = match.group(1).lower(), match.group(2)
    return f"{name}-{major}" if name[-1].isdigit() else f"{name}{major}"


def chosen_platforms() -> list[str]:
    """The Qt platform plugins Qt will try, in order (as QGuiApplication picks them)."""
    forced = os.environ.get("QT_QPA_PLATFORM", "").strip()
    if forced:
        return [p.split(":")[0] for p in forced.split(";") if p]
    wayland = (os.environ.get("WAYLAND_DISPLAY")
               and os.environ.get("XDG_SESSION_TYPE", "").lower() == "wayland")
    return ["wayland", "xcb"] if wayland else ["xcb"]


def plugin_path(platform: str) -> Path | None:
    """Qt's platform plugin file for `platform` (libqxcb.so...), if the build has one."""
    from PySide6.QtCore import QLibraryInfo  # QtCore only: loads no GUI library

    folder = Path(QLibraryInfo.path(QLibraryInfo.LibraryPath.PluginsPath)) / "platforms"
    found = folder / f"libq{platform}.so"
    return found if found.is_file() else None


def missing_libraries(library: Path) -> list[str]:
    """Sonames `library` needs (directly or not) that the system cannot find, by `ldd`;
    [] where ldd is not available (the launch then finds out the hard way)."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return []
    try:
        out = subprocess.run([ldd, str(library)], capture_output=True, text=True, timeout=20,
                             check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    missing = [line.split("=>")[0].strip() for line in out.splitlines() if "not found" in line]
    return sorted(set(missing))


def _answers(address: str | Path, tcp: tuple[str, int] | None = None) -> bool:
    """Whether a display server accepts connections at a unix socket (or a TCP port)."""
    family = socket.AF_INET if tcp else socket.AF_UNIX
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(2.0)
        try:
            s.connect(tcp if tcp else str(address))
        except OSError:
            return False
    return True


def x11_answers(display: str) -> bool:
    """Whether the X server named by $DISPLAY (":0", "host:0.0", "unix:1") accepts us."""
    match = re.fullmatch(r"(?:(.*)/)?([^:]*):(\d+)(?:\.\d+)?", display)
    if not match:
        return False
    host, number = match.group(2), int(match.group(3))
    if host in ("", "unix"):
        return (_answers(f"/tmp/.X11-unix/X{number}") or
                _answers(f"\0/tmp/.X11-unix/X{number}"))  # the abstract socket (Linux)
    return _answers("", tcp=(host, 6000 + number))


def wayland_answers(name: str) -> bool:
    path = Path(name) if name.startswith("/") else (
        Path(os.environ.get("XDG_RUNTIME_DIR", "/nonexistent")) / name)
    return _answers(path)


def platform_problem(platform: str) -> str | None:
    """Why Qt's `platform` plugin cannot open a window here, or None if it should."""
    if platform in HEADLESS_PLATFORMS:
        return None
    if platform == "xcb":
        display = os.environ.get("DISPLAY", "")
        if not display:
            return NO_DISPLAY
        if not x11_answers(display):
            return (f"the display {display} ($DISPLAY) does not answer: start Demixer from "
                    "a desktop session (or start that X server first)")
    elif platform == "wayland":
        name = os.environ.get("WAYLAND_DISPLAY", "")
        if not name or not wayland_answers(name):
            return f"the Wayland display {name or '(none)'} ($WAYLAND_DISPLAY) does not answer"
    plugin = plugin_path(platform)
    if plugin is None:
        return f"this Qt has no {platform!r} platform plugin"
    return libraries_problem(platform, missing_libraries(plugin))


def libraries_problem(platform: str, missing: list[str]) -> str | None:
    if not missing:
        return None
    packages = " ".join(sorted({debian_package(m) for m in missing}))
    what = "X11" if platform == "xcb" else platform.capitalize()
    return (f"Qt's {what} support needs {', '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed: on Debian or Ubuntu run "
            f"`sudo apt-get install {packages}`")


def display_problem() -> str | None:
    """One sentence (no trailing period) on why the window cannot open, or None. Only Linux
    and other X11/Wayland systems can fail this way."""
    if sys.platform in ("darwin", "win32"):
        return None
    problems = []
    for platform in chosen_platforms():
        problem = platform_problem(platform)
        if problem is None:
            return None
        problems.append(problem)
    return problems[-1] if len(problems) == 1 else "; and ".join(problems)


NO_DISPLAY_EXIT = 3  # `--check-display`: nothing to open a window on, libraries all there


def check_display_main() -> int:
    """`python -m app --check-display`: 0 and a line if a QGuiApplication opens on this
    machine's platform; 3 if this session has no display but the libraries are all there;
    else 1 and the reason. Run it in a subprocess: Qt may abort."""
    problem = display_problem()
    if problem == NO_DISPLAY:
        plugin = plugin_path("xcb")
        missing = libraries_problem("xcb", missing_libraries(plugin) if plugin else [])
        if missing is not None:
            print(f"The window cannot open: {missing}.")
            return 1
        print("No display in this session ($DISPLAY and $WAYLAND_DISPLAY are not set); the "
              "libraries Qt's X11 support needs are all installed.")
        return NO_DISPLAY_EXIT
    if problem is not None:
        print(f"The window cannot open: {problem}.")
        return 1
    from PySide6.QtGui import QGuiApplication

    app = QGuiApplication([sys.argv[0]])
    screen = app.primaryScreen()
    size = screen.size() if screen is not None else None
    where = f"{size.width()}x{size.height()} screen" if size is not None else "no screen"
    print(f"The window can open: Qt platform {app.platformName()!r}, {where}.")
    return 0
