"""`python -m engine.cli SUBCOMMAND ...`: the headless command line without the launcher."""

import sys

from engine.cli import main

sys.exit(main())
