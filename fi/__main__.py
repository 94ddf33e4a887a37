"""`python -m fi ...`: the `fi-grid` command (fi.cli), for environments without the console script."""

import sys

from fi.cli import main

sys.exit(main())
