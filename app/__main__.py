"""`python -m app [FILE...]`: the desktop app, as `demixer [FILE...]`;
`python -m app --check-display`: whether the window can open here (see app.display)."""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()  # a frozen app's worker process starts here
    from app.launch import launch

    sys.exit(launch(sys.argv[1:]))
