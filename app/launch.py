"""The launcher: `demixer ...` (the console script), `python -m app ...` and the frozen app.

`main(argv)` dispatches: a subcommand or flag goes to the headless command line
(`engine.cli.main`); `FILE...` or nothing opens the window, or hands the files to the one
already open (`launch`). It sits above both packages' entry points so `engine` never refers
to `app`. Qt-free at import: it decides whether Qt's GUI can load at all before anything
imports it.

Order: (1) another instance holds the app lock -> hand the files over and exit 0 (needs no
display); (2) the window cannot open here (`app.display`) -> one sentence and exit 1, not
Qt's abort; (3) the GUI's libraries do not import -> one sentence naming them; (4) the window.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

CHECK_DISPLAY_FLAG = "--check-display"


def main(argv: Sequence[str] | None = None) -> int:
    """`demixer [FILE...]` or `demixer SUBCOMMAND ...`: the exit status."""
    from engine.cli import is_headless
    from engine.cli import main as cli_main

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] != [CHECK_DISPLAY_FLAG] and is_headless(args):
        from app.doctor import HOST

        return cli_main(args, host=HOST)
    return launch(args)


def _say(text: str) -> None:
    print(f"demixer: {text}", file=sys.stderr, flush=True)


def launch(files: list[str]) -> int:
    if files[:1] == [CHECK_DISPLAY_FLAG]:
        from app.display import check_display_main

        return check_display_main()
    from app.instance import claim, hand_off
    from engine.errors import DemixerError

    try:
        lock = claim()
    except OSError as err:  # DEMIXER_HOME read-only, a file, on a disk that is gone...
        _say(f"the data folder {err.filename or ''} cannot be used ({err.strerror or err}); "
             "set DEMIXER_HOME to a folder you can write to.")
        return 1
    except DemixerError as err:
        _say(str(err))
        return 1
    if lock is None:
        problem = hand_off(files)
        if problem is None:
            if files:
                _say(f"{len(files)} file(s) opened in the Demixer window that is already "
                     "open.")
            return 0
        lock = claim()  # it may have quit meanwhile: then this one is the app
        if lock is None:
            _say(problem)
            return 1
    from app.display import display_problem

    problem = display_problem()
    if problem is not None:
        _say(f"the window cannot open: {problem}.")
        return 1
    try:
        from app.main import run_app
    except ImportError as err:  # e.g. libEGL.so.1 missing: QtGui does not load
        _say(f"the window cannot open: {import_problem(err)}.")
        return 1
    return run_app(files, lock=lock)


def import_problem(err: ImportError) -> str:
    """One clause for an ImportError of the GUI: the missing library and its package."""
    from app.display import debian_package

    text = str(err)
    if "cannot open shared object file" in text:
        library = text.split(":")[0].strip()
        return (f"the system library {library} is missing (on Debian or Ubuntu: "
                f"`sudo apt-get install {debian_package(library)}`)")
    return f"the app's Python packages do not import ({text}); reinstall Demixer"
