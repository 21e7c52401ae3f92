"""`renegx evaluate` (and `python -m renegx.evaluate`): generate, score with several judges and report
(`renegx.evaluate`)."""

from __future__ import annotations

from renegx.cli.terminal import RERUN, run_reporting_errors, with_config_files


def main(argv: list[str] | None = None, prog: str = "renegx evaluate") -> int:
    """The evaluate job; a bad input becomes one line on stderr and exit code 2."""
    from renegx.evaluate.run import run_evaluation
    from renegx.evaluate.settings import parse_evaluate_args, settings_from_args

    def job() -> None:
        args = None if argv is None else with_config_files(argv, "evaluate")
        run_evaluation(settings_from_args(parse_evaluate_args(args, prog)))

    return run_reporting_errors(job, on_interrupt=RERUN)
