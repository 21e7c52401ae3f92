"""Wiring of the jobs: `train.py` (LightningCLI over ReNegModule + PromptDataModule) and `infer.py`."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from renegx.data import PromptDataModule
from renegx.errors import RenegxError
from renegx.files import OutputError
from renegx.module import ReNegModule

# The frozen backbone and reward are in eval mode on purpose.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
# train_main passes explicit args on purpose (tests, default config); LightningCLI warns if argv is set too.
warnings.filterwarnings("ignore", message=r".*args parameter is intended to run from within Python.*")


class RenegxCLI(LightningCLI):
    """LightningCLI with renegx's defaults: seeded, resolved config saved beside every run."""

    def __init__(self, args=None, run: bool = True, **kwargs):
        super().__init__(
            ReNegModule,
            PromptDataModule,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
            **kwargs,
        )


class _ParseOnlyCLI(RenegxCLI):
    def instantiate_classes(self) -> None:
        """Parsing and type-checking only: nothing is built, nothing is downloaded."""


def parse_config(path: str | Path):
    """Parse and type-check a training config without instantiating anything (so without downloads)."""
    return _ParseOnlyCLI(args=["--config", str(path)], run=False).config


def run_reporting_errors(job: Callable[[], object]) -> int:
    """Run a job; a renegx error (bad input, missing file) becomes one line on stderr and exit code 2."""
    try:
        job()
    except (RenegxError, OutputError) as err:
        print(f"renegx: error: {err}", file=sys.stderr)
        return 2
    return 0


def train_main(argv: list[str] | None = None, default_config: str | Path | None = None) -> int:
    """`python train.py fit --config ...`; with no arguments, `fit --config <default_config>`."""
    if argv is None:
        argv = sys.argv[1:]
    if not argv and default_config is not None:
        argv = ["fit", "--config", str(default_config)]
    # LightningCLI reads sys.argv itself when args is None, and warns when given both.
    args = None if argv == sys.argv[1:] and argv else list(argv)
    return run_reporting_errors(lambda: RenegxCLI(args=args))


def infer_main(argv: list[str] | None = None) -> int:
    from renegx.generate import generate_from_args, parse_infer_args

    args = parse_infer_args(argv)
    return run_reporting_errors(lambda: generate_from_args(args))
