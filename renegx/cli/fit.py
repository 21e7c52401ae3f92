"""`renegx fit` (and `train.py`): LightningCLI over `ReNegModule` + `PromptDataModule`, with renegx's
defaults: the shipped `train/base` read before the given config, seeded, the resolved config saved beside
every run, checkpoints written atomically, `--ckpt_path last` resuming the run's newest `last.ckpt`, and
errors as one line."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
from pathlib import Path

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from renegx.cli.terminal import (
    Interrupted,
    UsageError,
    add_threads,
    names_a_config,
    one_line,
    run_reporting_errors,
    set_threads,
    usage_suggestion,
    with_config_files,
)
from renegx.configs import DEFAULT_TRAIN, TRAIN_BASE, path_of
from renegx.files import ensure_writable_dir
from renegx.train.checkpoint_io import AtomicCheckpointIO
from renegx.train.data import PromptDataModule
from renegx.train.module import ReNegModule
from renegx.train.progress import StepProgressBar

# Lightning notices that do not apply to a renegx fit, ignored for the run (`run_reporting_errors`).
FIT_NOTICES = (
    # The frozen backbone and reward are in eval mode on purpose.
    r".*module\(s\) in eval mode.*",
    # lightning_main passes explicit args (config names resolved); LightningCLI warns when argv is set.
    r".*args parameter is intended to run from within Python.*",
    # A resume restores the data position and logs into a new version folder: Lightning's notices that the
    # dataloader is not resumable and that the checkpoint folder changed do not apply.
    r".*your dataloader is not resumable.*",
    r".*The dirpath has changed from.*",
    # Lightning's all_gather (used once per checkpoint under DDP) goes through a deprecated torch function.
    r".*torch.distributed.nn.functional.all_gather is deprecated.*",
)


PER_PROMPT_HELP = (
    "also: per-prompt  tune one negative per prompt from a global embedding into a bank "
    "(train.py per-prompt --config C --embedding G.safetensors --prompts P --out bank.safetensors; "
    "train.py per-prompt --help)"
)


class RenegxCLI(LightningCLI):
    """LightningCLI with renegx's defaults (see the module); parse errors are raised, so that
    `run_reporting_errors` prints them as one line."""

    def __init__(self, args=None, run: bool = True, defaults: tuple[Path, ...] = (TRAIN_BASE,), **kwargs):
        base = {"default_config_files": [str(path) for path in defaults]}
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

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """`fit` only: renegx's configs train; Lightning's validate, test and predict have nothing to run."""
        return {"fit": LightningCLI.subcommands()["fit"]}

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict, subparser_kwargs: dict) -> None:
        # `per-prompt` is dispatched by `train_main` before LightningCLI parses; the top-level help names it.
        if add_subcommands:
            main_kwargs = {**main_kwargs, "epilog": PER_PROMPT_HELP}
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        add_threads(parser)

    def before_instantiate_classes(self) -> None:
        subcommand = self.config.get("subcommand")
        set_threads((self.config[subcommand] if subcommand else self.config).get("threads"))

    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as err:
            message = one_line(str(err))
            raise UsageError(message + usage_suggestion(message, _all_flags(parser))) from err

    def instantiate_trainer(self, **kwargs) -> Trainer:
        configured = self._get(self.config_init, "trainer", default={}).get("callbacks") or []
        named_bar = any(isinstance(callback, ProgressBar) for callback in configured)
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if not named_bar:
            with_step_progress_bar(trainer)
        # First, so that the bar's last frame is drawn before what other callbacks print at fit end.
        trainer.callbacks.insert(0, CloseProgressBarAtFitEnd())
        trainer.callbacks.append(ResumeHint())
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except SystemExit:  # Lightning ends a fit stopped by Ctrl-C so, after its callbacks' on_exception
            remove_unused_run_folder(self.trainer)
            hints = [c.message for c in self.trainer.callbacks if isinstance(c, ResumeHint) and c.message]
            if hints:
                raise Interrupted(hints[0]) from None
            raise
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


def with_step_progress_bar(trainer: Trainer) -> None:
    """Put `StepProgressBar` where Lightning's default bar is (none with `enable_progress_bar: false`); a bar
    the config names is kept."""
    default = trainer.progress_bar_callback
    if default is not None:
        trainer.callbacks[trainer.callbacks.index(default)] = StepProgressBar()


class CloseProgressBarAtFitEnd(Callback):
    """Draws the progress bar's last frame when fit ends, so that a summary printed at fit end (the held-out
    table) is the last thing on the terminal; a live bar would otherwise redraw its metrics under it."""

    def on_fit_end(self, trainer: Trainer, pl_module) -> None:
        if trainer.progress_bar_callback is not None:
            trainer.progress_bar_callback.teardown(trainer, pl_module, "fit")


class ResumeHint(Callback):
    """On Ctrl-C: what the run kept and how to resume it, as one line (`message`, printed by the CLI)."""

    def __init__(self):
        self.message = ""

    def on_exception(self, trainer: Trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, KeyboardInterrupt):
            return
        checkpoint = find_last_checkpoint(trainer)
        self.message = (
            f"the newest checkpoint is {checkpoint}: run the same command with --ckpt_path last to resume"
            if checkpoint
            else "no checkpoint was written yet: run the same command to start again"
        )


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


def lightning_main(argv: list[str]) -> int:
    """LightningCLI on `argv`, a subcommand (`fit`) and its flags, or `-h` alone. Without a `--config`, the
    shipped default (`train/default`, the toy world) is read under the flags, so `train.py`, `train.py
    --print_config` and `train.py fit --trainer.max_steps 2` all mean the default config."""
    defaults = (TRAIN_BASE,) if names_a_config(argv) else (TRAIN_BASE, path_of(DEFAULT_TRAIN))

    def job():
        RenegxCLI(args=with_config_files(argv, "train"), defaults=defaults)

    return run_reporting_errors(job, ignore=FIT_NOTICES)


def main(argv: list[str], prog: str = "renegx fit") -> int:
    """`renegx fit [--config C] [flags]` (`prog`: the job interface's; LightningCLI names itself)."""
    return lightning_main(["fit", *argv])
