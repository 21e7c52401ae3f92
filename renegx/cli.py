"""Wiring of the jobs and the `renegx` command: `renegx fit` (LightningCLI over ReNegModule +
PromptDataModule), `renegx per-prompt`, `renegx infer`, `renegx evaluate`; `train.py`, `infer.py` and
`python -m renegx.evaluate` are aliases. Every job parses with jsonargparse (`--config`, `--print_config`)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from renegx.checkpoint_io import AtomicCheckpointIO
from renegx.data import PromptDataModule
from renegx.errors import RenegxError
from renegx.files import OutputError, ensure_writable_dir
from renegx.module import ReNegModule
from renegx.terminal import UsageError, did_you_mean, one_line, quiet_third_party, usage_suggestion

# The frozen backbone and reward are in eval mode on purpose.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
# train_main passes explicit args on purpose (tests, default config); LightningCLI warns if argv is set too.
warnings.filterwarnings("ignore", message=r".*args parameter is intended to run from within Python.*")
# Lightning's all_gather (used once per checkpoint under DDP) goes through a deprecated torch function.
warnings.filterwarnings("ignore", message=r".*torch.distributed.nn.functional.all_gather is deprecated.*")


PER_PROMPT_HELP = (
    "also: per-prompt  tune one negative per prompt from a global embedding into a bank "
    "(train.py per-prompt --config C --embedding G.safetensors --prompts P --out bank.safetensors; "
    "train.py per-prompt --help)"
)


# Read before every training config: the trainer and callbacks the configs share (see the file).
TRAIN_BASE = Path(__file__).resolve().parents[1] / "configs" / "train" / "base.yaml"
# `python train.py` with no arguments trains this one (the toy world).
DEFAULT_TRAIN_CONFIG = TRAIN_BASE.with_name("default.yaml")
DEFAULT_TRAIN_CONFIG_NAME = "configs/train/default.yaml"


class RenegxCLI(LightningCLI):
    """LightningCLI with renegx's defaults: `configs/train/base.yaml` read before the given config, seeded,
    resolved config saved beside every run, checkpoints written atomically, `--ckpt_path last` resuming the
    run's newest `last.ckpt`, parse errors raised (so `run_reporting_errors` prints them as one line)."""

    def __init__(self, args=None, run: bool = True, **kwargs):
        base = {"default_config_files": [str(TRAIN_BASE)]}
        super().__init__(
            ReNegModule,
            PromptDataModule,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            # No abbreviated options: `--model.guidance 3` must be an error, not a guidance_scale.
            parser_kwargs={"exit_on_error": False, "allow_abbrev": False, **({"fit": base} if run else base)},
            args=args,
            run=run,
            **kwargs,
        )

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict, subparser_kwargs: dict) -> None:
        # `per-prompt` is dispatched by train_main before LightningCLI parses; the top-level help names it.
        if add_subcommands:
            main_kwargs = {**main_kwargs, "epilog": PER_PROMPT_HELP}
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)

    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as err:
            message = one_line(str(err))
            raise UsageError(message + usage_suggestion(message, _all_flags(parser))) from err

    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        # First, so that the bar's last frame is drawn before what other callbacks print at fit end.
        trainer.callbacks.insert(0, CloseProgressBarAtFitEnd())
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            remove_unused_run_folder(self.trainer)
            raise

    def _parse_ckpt_path(self) -> None:
        """Check a given checkpoint (a missing or corrupt file is a one-line `CheckpointError`), but do not
        let its saved hyper-parameters override the config, as LightningCLI would: the config defines the
        run, with an explicit path as with `last`, and a checkpoint that does not fit it is refused."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and ckpt_path not in ("last", "best", "hpc"):
            AtomicCheckpointIO().load_checkpoint(ckpt_path)

    def before_fit(self) -> None:
        for folder in output_folders(self.trainer):
            ensure_writable_dir(folder)
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") == "last":
            config["ckpt_path"] = find_last_checkpoint(self.trainer)
            if config["ckpt_path"] is None:
                _say("no last checkpoint of this run yet (--ckpt_path last): starting from scratch")
            else:
                _say(f"resuming from {config['ckpt_path']}")


def _all_flags(parser) -> set[str]:
    """The flags of a LightningCLI parser and of all its subcommands."""
    parsers = [parser]
    if parser._subcommands_action is not None:
        parsers += parser._subcommands_action._name_parser_map.values()
    return {flag for p in parsers for flag in p._option_string_actions}


class CloseProgressBarAtFitEnd(Callback):
    """Draws the progress bar's last frame when fit ends, so that a summary printed at fit end (the held-out
    table) is the last thing on the terminal; a live bar would otherwise redraw its metrics under it."""

    def on_fit_end(self, trainer: Trainer, pl_module) -> None:
        if trainer.progress_bar_callback is not None:
            trainer.progress_bar_callback.teardown(trainer, pl_module, "fit")


# What a run writes before training starts; a run folder holding only these was not used.
SETUP_FILES = {"config.yaml", "hparams.yaml"}


@rank_zero_only
def remove_unused_run_folder(trainer: Trainer | None) -> None:
    """After a failed run: remove its version folder if nothing but setup files was written in it, so that the
    next run takes the same version number (and the documented `version_0` paths stay right)."""
    logger = trainer.loggers[0] if trainer is not None and trainer.loggers else None
    folder = Path(logger.log_dir) if logger is not None and logger.log_dir else None
    if folder is None or not folder.is_dir() or folder == Path(logger.save_dir or "."):
        return
    if all(path.name in SETUP_FILES for path in folder.rglob("*") if path.is_file()):
        shutil.rmtree(folder, ignore_errors=True)
        if folder.parent != Path(logger.save_dir or "."):
            with contextlib.suppress(OSError):  # the run name's folder too, if this was its only version
                folder.parent.rmdir()


@rank_zero_only
def _say(message: str) -> None:
    print(f"renegx: {message}", file=sys.stderr)


def output_folders(trainer: Trainer) -> list[Path]:
    """Where a run writes: the logger's save_dir (else default_root_dir) and explicit checkpoint dirs."""
    logger = trainer.loggers[0] if trainer.loggers else None
    root = logger.save_dir if logger is not None and logger.save_dir else trainer.default_root_dir
    folders = [Path(root)]
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            folders.append(Path(callback.dirpath))
    return folders


def find_last_checkpoint(trainer: Trainer) -> str | None:
    """The newest `last*.ckpt` of this run in any of its logger's versions, or in an explicit checkpoint dir.

    Every start of a run logs into a new version folder (`runs/<name>/version_N/checkpoints/`), so Lightning's
    own `ckpt_path="last"`, which looks in the new, empty folder only, would silently start from scratch.
    """
    candidates: list[Path] = []
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            candidates += Path(callback.dirpath).glob("last*.ckpt")
    logger = trainer.loggers[0] if trainer.loggers else None
    if logger is not None and logger.save_dir:
        candidates += (Path(logger.save_dir) / str(logger.name or "")).glob("*/checkpoints/last*.ckpt")
    else:
        candidates += (Path(trainer.default_root_dir) / "checkpoints").glob("last*.ckpt")
    candidates = [path for path in candidates if path.is_file()]
    return str(max(candidates, key=lambda path: path.stat().st_mtime_ns)) if candidates else None


class _ParseOnlyCLI(RenegxCLI):
    def instantiate_classes(self) -> None:
        """Parsing and type-checking only: nothing is built, nothing is downloaded."""


def parse_config(path: str | Path):
    """Parse and type-check a training config without instantiating anything (so without downloads)."""
    return _ParseOnlyCLI(args=["--config", str(path)], run=False).config


# Environment problems (full disk, read-only or forbidden folder) that are reported as one line.
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES}


def run_reporting_errors(job: Callable[[], object]) -> int:
    """Run a job; a renegx error (bad input, missing file) becomes one line on stderr and exit code 2."""
    quiet_third_party()
    try:
        job()
    except (RenegxError, OutputError) as err:
        print(f"renegx: error: {err}", file=sys.stderr)
        return 2
    except argparse.ArgumentError as err:  # a bad option, config key or value (LightningCLI's parser)
        print(f"renegx: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in DISK_ERRORS:
            raise
        target = err.filename2 or err.filename
        print(f"renegx: error: cannot write {target}: {err.strerror}", file=sys.stderr)
        return 2
    return 0


def train_main(argv: list[str] | None = None, default_config: str | Path | None = None) -> int:
    """`python train.py fit --config ...`; with no arguments, `fit --config <default_config>`."""
    if argv is None:
        argv = sys.argv[1:]
    if not argv and default_config is not None:
        argv = ["fit", "--config", str(default_config)]
    if argv and argv[0] == "per-prompt":
        return per_prompt_main(argv[1:])
    # LightningCLI reads sys.argv itself when args is None, and warns when given both.
    args = None if argv == sys.argv[1:] and argv else list(argv)
    return run_reporting_errors(lambda: RenegxCLI(args=args))


def per_prompt_main(argv: list[str], prog: str = "train.py per-prompt") -> int:
    """`python train.py per-prompt --config C --embedding G.safetensors --prompts P --out bank.safetensors`
    (see `renegx.per_prompt`)."""
    from renegx.generate import naming_the_base_model
    from renegx.per_prompt import parse_per_prompt_args, tune_bank_from_args

    def job() -> None:
        args = parse_per_prompt_args(argv, prog)
        fix = f"pass a --config whose model.model is '{{base}}' ({DEFAULT_TRAIN_CONFIG_NAME} for 'toy')"
        with naming_the_base_model(args.embedding, lambda: args.model.model, fix):
            tune_bank_from_args(args)

    return run_reporting_errors(job)


def infer_main(argv: list[str] | None = None, prog: str = "infer.py") -> int:
    from renegx.generate import generate_from_args, parse_infer_args

    return run_reporting_errors(lambda: generate_from_args(parse_infer_args(argv, prog)))


def evaluate_main(argv: list[str] | None = None, prog: str = "python -m renegx.evaluate") -> int:
    """The evaluate job; a bad input becomes one line on stderr and exit code 2."""
    from renegx.evaluate.run import run_evaluation
    from renegx.evaluate.settings import parse_evaluate_args, settings_from_args

    return run_reporting_errors(lambda: run_evaluation(settings_from_args(parse_evaluate_args(argv, prog))))


# -- `renegx`: every job behind one command ------------------------------------------------------------------
COMMANDS = {
    "fit": "train a negative embedding (--config configs/train/NAME.yaml; --model.*, --trainer.*, --data.*)",
    "per-prompt": "tune one negative per prompt from a global embedding into a bank",
    "infer": "generate images with a negative (embedding, bank, text, none, null) and optional sampler",
    "evaluate": "generate, score with several judges and report, negatives against a baseline",
}
TRAINER_COMMANDS = ("fit", "validate", "test", "predict")


def renegx_help() -> str:
    lines = [
        "usage: renegx {fit,per-prompt,infer,evaluate} [--config FILE.yaml] [options] [--print_config]",
        "",
        "Learned negative embeddings for diffusion models: train, tune per prompt, generate, evaluate.",
        "Every command reads --config files and flags on one system (jsonargparse; flags win), prints the",
        "resolved settings with --print_config and its options with --help (renegx infer --help).",
        "",
        "commands:",
        *(f"  {name:<11} {text}" for name, text in COMMANDS.items()),
        "",
        f"`renegx fit` with no other argument trains {DEFAULT_TRAIN_CONFIG_NAME} (the toy world); fit's",
        "LightningCLI also has validate, test and predict.",
        "Aliases: train.py = renegx fit | per-prompt, infer.py = renegx infer, python -m renegx.evaluate =",
        "renegx evaluate.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The `renegx` command: `renegx fit | per-prompt | infer | evaluate ...`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(renegx_help())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command in TRAINER_COMMANDS:
        return train_main([command, *rest] if rest or command != "fit" else [], DEFAULT_TRAIN_CONFIG)
    if command == "per-prompt":
        return per_prompt_main(rest, "renegx per-prompt")
    if command == "infer":
        return infer_main(rest, "renegx infer")
    if command == "evaluate":
        return evaluate_main(rest, "renegx evaluate")
    choices = [*COMMANDS, *TRAINER_COMMANDS[1:]]
    message = (
        f"invalid command '{command}' (choose from {', '.join(choices)}){did_you_mean(command, choices)}"
    )
    return run_reporting_errors(lambda: _raise(UsageError(f"renegx: {message}")))


def _raise(error: Exception) -> None:
    raise error
