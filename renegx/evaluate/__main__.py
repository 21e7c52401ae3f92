"""`python -m renegx.evaluate`: generate, score and report (see `renegx.evaluate`)."""

from __future__ import annotations

import sys


def evaluate_main(argv: list[str] | None = None) -> int:
    """The evaluate job; a bad input becomes one line on stderr and exit code 2."""
    from renegx.cli import run_reporting_errors
    from renegx.evaluate.run import run_evaluation
    from renegx.evaluate.settings import parse_evaluate_args, settings_from_args

    return run_reporting_errors(lambda: run_evaluation(settings_from_args(parse_evaluate_args(argv))))


if __name__ == "__main__":
    sys.exit(evaluate_main())
