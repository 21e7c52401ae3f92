"""`python -m renegx.evaluate` = `renegx evaluate`: generate, score and report (see `renegx.evaluate`)."""

from __future__ import annotations

import sys

from renegx.cli import evaluate_main

if __name__ == "__main__":
    sys.exit(evaluate_main())
