"""The frozen app's entry point: `Demixer --self-test`, else `demixer`'s launcher.

PyInstaller runs this file as `__main__`. With no arguments (a double click) or with files
(the command line), the launcher `app.launch.main` opens the window; subcommands run
headless, as the `demixer` console script (the same launcher) does; `--check-display` is the
window probe. `--self-test` runs `engine.cli.selftest` plus the checks below,
which `engine` may not make itself (it never imports Qt): the Qt platform and plugins, the
Qt bindings' reference counting, PortAudio, and the `app` package. It needs no display.

Files opened from Finder (a drop on the Dock icon, "Open With") arrive as Qt `FileOpen`
events, not as arguments: argv emulation is off (PyInstaller advises against it with Qt).
"""

from __future__ import annotations

import importlib
import importlib.util
import multiprocessing
import os
import sys
from pathlib import Path

from app.doctor import HOST  # Qt-free: the window probe runs in a child process

SELF_TEST_FLAG = "--self-test"
LEAKED_NONE_LIMIT = 100  # of 1000 void calls; a correct binding loses none


def resources_dir() -> Path:
    """resources/ inside the bundle (frozen) or in the source tree."""
    bundle = getattr(sys, "_MEIPASS", None)
    root = Path(bundle) if bundle else Path(__file__).resolve().parent.parent
    return root / "resources"


def _inside_bundle(path: str | Path) -> bool:
    bundle = getattr(sys, "_MEIPASS", None)
    return bundle is None or Path(path).resolve().is_relative_to(Path(bundle).resolve())


def check_qt() -> str:
    """Qt starts on the offscreen platform and has its image format plugins, the icon, and
    (on macOS) the native style."""
    from PySide6.QtCore import QLibraryInfo
    from PySide6.QtGui import QImage, QImageReader
    from PySide6.QtWidgets import QApplication, QStyleFactory

    from engine.cli.selftest import expect

    app = QApplication.instance() or QApplication([sys.argv[0]])
    expect(app.platformName() == "offscreen", f"Qt runs on {app.platformName()!r}, "
           "not 'offscreen'")
    formats = {bytes(f.data()).decode() for f in QImageReader.supportedImageFormats()}
    expect({"png", "jpeg", "ico", "svg"} <= formats,
           f"Qt's image format plugins are missing: it reads only {sorted(formats)}")
    icon = QImage(str(resources_dir() / "Demixer.png"))
    expect(not icon.isNull() and icon.width() >= 256, f"the icon {resources_dir()} "
           "/Demixer.png does not load")
    styles = QStyleFactory.keys()
    if sys.platform == "darwin":
        expect("macOS" in styles, f"the macOS style plugin is missing (styles: {styles})")
    plugins = QLibraryInfo.path(QLibraryInfo.LibraryPath.PluginsPath)
    expect(_inside_bundle(plugins), f"Qt plugins come from {plugins}, outside the bundle")
    return (f"{app.platformName()} platform, plugins in {plugins}; reads "
            f"{', '.join(sorted(formats))}; styles {', '.join(styles)}")


def check_qt_refcounts() -> str:
    """Calls of void Qt methods leave None's reference count alone (PySide6 6.12.0 on Python
    3.11 drops one per call, and the app crashes after a few thousand calls)."""
    from PySide6 import __version__ as pyside_version
    from PySide6.QtCore import QObject

    from engine.cli.selftest import expect

    probe = QObject()
    before = sys.getrefcount(None)
    for _ in range(1000):
        probe.setObjectName("probe")
    lost = before - sys.getrefcount(None)
    expect(lost < LEAKED_NONE_LIMIT, f"PySide6 {pyside_version} drops a reference to None on "
           f"every void call ({lost} in 1000): the app would crash; use another PySide6")
    return f"PySide6 {pyside_version}: 1000 void calls, None's reference count kept"


def check_portaudio() -> str:
    """sounddevice loads PortAudio (the bundled copy when frozen); devices are optional."""
    import sounddevice

    from engine.cli.selftest import expect

    library = sounddevice._libname
    expect(_inside_bundle(library), f"PortAudio was loaded from {library}, outside the bundle")
    devices = sounddevice.query_devices()
    return (f"{sounddevice.get_portaudio_version()[1]} from {library}; "
            f"{len(devices)} audio devices")


def check_app_package() -> str:
    """The GUI's package is in the build and its entry point imports."""
    from engine.cli.selftest import expect

    expect(importlib.util.find_spec("app") is not None, "the app package is not in this build")
    expect(importlib.util.find_spec("app.main") is not None,
           "app.main is not in this build: the window cannot open")
    module = importlib.import_module("app.main")
    expect(callable(getattr(module, "run_app", None)), "app.main has no run_app()")
    loaded = sorted(m for m in sys.modules if m == "app" or m.startswith("app."))
    return f"app.main.run_app imports ({len(loaded)} app modules loaded)"


APP_CHECKS = [
    *HOST.self_test_checks,  # the window, as `demixer --self-test` has it
    ("Qt", check_qt),
    ("Qt bindings", check_qt_refcounts),
    ("PortAudio", check_portaudio),
    ("app package", check_app_package),
]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [SELF_TEST_FLAG]:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"  # the self-test needs no display
        from engine.cli.selftest import main as self_test

        return self_test(argv[1:], extra_checks=APP_CHECKS)
    from app.launch import main as launcher_main  # also the window probe, --check-display

    return launcher_main(argv)


if __name__ == "__main__":
    multiprocessing.freeze_support()  # a frozen child process must not rerun the app
    sys.exit(main())
