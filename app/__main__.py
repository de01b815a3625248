"""`python -m app [FILE...]`: the desktop app, as `demixer [FILE...]`."""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()  # a frozen app's worker process starts here
    from app.main import run_app

    sys.exit(run_app(sys.argv[1:]))
