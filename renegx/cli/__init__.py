"""The `renegx` command: one table of jobs, each the `main` of its own module, imported only when run.

`renegx fit | per-prompt | infer | evaluate | convert | invert | convert-reward | weights`; `train.py`,
`infer.py` and `python -m renegx.evaluate` are aliases. Every job parses with jsonargparse or a one-line-error
argparse parser (`renegx.cli.terminal`); `renegx --help` imports nothing heavy.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

from renegx.configs import DEFAULT_TRAIN


@dataclass(frozen=True)
class Job:
    """A job of the `renegx` command: `module`'s `main(argv, prog)`."""

    module: str
    help: str


JOBS = {
    "fit": Job(
        "renegx.cli.fit",
        "train a negative embedding (--config train/NAME or a YAML file; --model.*, --trainer.*, --data.*)",
    ),
    "per-prompt": Job("renegx.cli.per_prompt", "tune one negative per prompt from a global embedding"),
    "infer": Job(
        "renegx.cli.infer",
        "generate images with a negative (embedding, bank, text, none, null) and optional sampler",
    ),
    "evaluate": Job(
        "renegx.cli.evaluate",
        "generate, score with several judges and report, negatives against a baseline",
    ),
    "convert": Job(
        "renegx.cli.convert",
        "an official ReNeg .bin -> a renegx .safetensors with its provenance",
    ),
    "invert": Job(
        "renegx.cli.invert",
        "an output-space negative -> N token vectors, saved as the textual-inversion files interfaces load",
    ),
    "convert-reward": Job("renegx.cli.convert_reward", "a pickled reward checkpoint -> safetensors, once"),
    "weights": Job("renegx.cli.weights", "fetch what a training config needs, for offline runs"),
}


def run_job(name: str, argv: list[str], prog: str | None = None) -> int:
    """Run job `name` on `argv` (its own arguments), as `prog` in its messages."""
    job = JOBS[name]
    return importlib.import_module(job.module).main(argv, prog=prog or f"renegx {name}")


def train_main(argv: list[str] | None = None, prog: str = "train.py") -> int:
    """`train.py [fit] [--config C] [flags]` or `train.py per-prompt ...`; no arguments train the shipped
    default (`train/default`), and flags alone are `fit`'s."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["per-prompt"]:
        return per_prompt_main(argv[1:], prog=f"{prog} per-prompt")
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["fit", *argv]
    from renegx.cli.fit import lightning_main

    return lightning_main(argv)


def infer_main(argv: list[str] | None = None, prog: str = "infer.py") -> int:
    return run_job("infer", sys.argv[1:] if argv is None else argv, prog)


def evaluate_main(argv: list[str] | None = None, prog: str = "renegx evaluate") -> int:
    return run_job("evaluate", sys.argv[1:] if argv is None else argv, prog)


def per_prompt_main(argv: list[str], prog: str = "train.py per-prompt") -> int:
    return run_job("per-prompt", argv, prog)


def renegx_help() -> str:
    lines = [
        f"usage: renegx {{{','.join(JOBS)}}} [options]",
        "",
        "Learned negative embeddings for diffusion models: train, tune per prompt, generate, evaluate.",
        "Every job reads --config (a shipped name such as train/tiny, or a YAML file) and flags on one",
        "system (flags win), prints the resolved settings with --print_config and its options with --help.",
        "",
        "commands:",
        *(f"  {name:<15} {job.help}" for name, job in JOBS.items()),
        "",
        f"`renegx fit` with no other argument trains {DEFAULT_TRAIN} (the toy world).",
        "Aliases: train.py = renegx fit | per-prompt, infer.py = renegx infer, python -m renegx.evaluate =",
        "renegx evaluate.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The `renegx` command."""
    from renegx.cli.terminal import UsageError, run_reporting_errors
    from renegx.errors import did_you_mean

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(renegx_help())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command in JOBS:
        return run_job(command, rest)
    choices = list(JOBS)
    nearest = did_you_mean(command, choices)
    message = f"invalid command '{command}' (choose from {', '.join(choices)}){nearest}"

    def refuse() -> None:
        raise UsageError(f"renegx: {message}")

    return run_reporting_errors(refuse)
