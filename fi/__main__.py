"""`python -m fi ...`: the `fi` command (fi.cli). In bash and zsh a bare `fi` is a shell keyword, so
type `python -m fi parity ...` (or `command fi parity ...`)."""

import sys

from fi.cli import main

sys.exit(main())
