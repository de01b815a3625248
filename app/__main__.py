"""`python -m app [FILE...]` or `python -m app SUBCOMMAND ...`: the launcher, as `demixer`
(`app.launch.main`); `python -m app --check-display`: whether the window can open here (see
app.display)."""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()  # a frozen app's worker process starts here
    from app.launch import main

    sys.exit(main())
