"""`python -m renegx.cli` = `renegx`, for environments whose scripts folder is not on PATH."""

import sys

from renegx.cli import main

if __name__ == "__main__":
    sys.exit(main())
