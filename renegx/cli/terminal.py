"""What a person sees at renegx's entry points (`renegx`, train.py, infer.py, `python -m renegx.evaluate`).

Third-party lines known to be harmless are silenced, so that what is printed is renegx's own, and a bad
command line is one line that names the bad value, the choices and the nearest one ("did you mean").
"""

from __future__ import annotations

import argparse
import errno
import functools
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from renegx.configs import resolve
from renegx.errors import RenegxError, RenegxWarning, did_you_mean
from renegx.files import OutputError


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


@functools.cache  # once per process: the filters are global
def quiet_third_party() -> None:
    """Silence known-harmless third-party notices; warnings that may matter are left alone."""
    # Lightning's advertisements for its cloud services, printed at every fit, and its note on Ctrl-C (renegx
    # prints what was kept and how to resume instead).
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        _DropMessages("💡 Tip:", "Detected KeyboardInterrupt")
    )
    # Without torchvision, transformers picks the PIL image processors itself (renegx needs no torchvision).
    logging.getLogger("transformers.utils.import_utils").addFilter(
        _DropMessages("requires torchvision (not installed)")
    )
    # Truncated prompts: renegx says so once per prompt (`PromptTruncated`); the tokenizer's and the
    # pipelines' own notices repeat it per batch, with padding tokens in the "truncated" text.
    # They come from many modules: filtered at each library's own handler, which every one of them reaches.
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    truncation = _DropMessages(
        "Token indices sequence length is longer than", "The following part of your input was truncated"
    )
    for library in (diffusers_logging, transformers_logging):
        library.get_logger()  # makes the library's handler
        for handler in library.get_logger().handlers:
            handler.addFilter(truncation)
    # renegx's own warnings (a bank serving no prompt, a file from another base model) as one line each.
    warnings.formatwarning = functools.partial(_format_warning, warnings.formatwarning)
    # A bar per model load ("Loading weights") between renegx's own lines.
    transformers_logging.disable_progress_bar()


# Warnings known to be harmless, ignored while a job runs (not at import: a filter added then would be lost
# when an enclosing `warnings.catch_warnings` ends, as under pytest).
HARMLESS_WARNINGS = (
    # Lightning's own pytree helper uses a torch API torch has deprecated; nothing for a user to do.
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
)

PACKAGE = str(Path(__file__).resolve().parents[1])


def _format_warning(default, message, category, filename, lineno, line=None) -> str:
    """`renegx: warning: <message>` for a UserWarning raised in renegx; `default`'s format for the rest."""
    if category is UserWarning and str(Path(filename).resolve()).startswith(PACKAGE):
        return f"renegx: warning: {message}\n"
    return default(message, category, filename, lineno, line)


def usage_suggestion(message: str, flags) -> str:
    """' (did you mean X?)' for an argparse error `message`: the choice nearest to an invalid value, or the
    flag among `flags` nearest to the first unrecognised one; '' when none is near."""
    choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if choice:
        return did_you_mean(choice.group(1), re.findall(r"'([^']*)'", choice.group(2)))
    unknown = re.match(r"unrecognized arguments: (.*)", message)
    given = re.findall(r"(?:^|\s)(--[^\s=]+)", unknown.group(1)) if unknown else []
    key = re.search(r"(?:does not accept option|Option) '([^']+)'", message)  # a config's unknown key
    if key:
        given = [f"--{key.group(1)}"]
    return did_you_mean(given[0], flags) if given else ""


class UsageError(RenegxError):
    """A bad command line: an unknown flag, a value not among the choices, a missing argument."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise `UsageError` (one line, with "did you mean") instead of printing
    the usage and exiting; the entry points print it as `renegx: error: ...` with exit code 2."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}{usage_suggestion(message, self._option_string_actions)}")


# -- one config system: every job's command line is a jsonargparse parser ------------------------------------
# `--config FILE.yaml` (its keys are the option names with `_` for `-`, the command line wins),
# `--print_config` (the resolved settings, as a config to start from), no abbreviated options, errors as
# one line.
def job_parser(prog: str, description: str, **kwargs):
    """The parser of a renegx job: `--config` and `--print_config`; parse it with `parse_job_args`."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog=prog, description=description, exit_on_error=False, allow_abbrev=False, **kwargs
    )
    parser.add_argument(
        "--config", action=ActionConfigFile, help="a YAML file of these options (`_` for `-`); flags win"
    )
    return parser


def count(number: int, noun: str) -> str:
    """`1 image`, `2 images`: a number and its noun, singular or plural."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def one_line(message: str) -> str:
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def parse_job_args(parser, argv: list[str] | None):
    """`parser.parse_args(argv)` with a bad command line or config raised as one `UsageError` line."""
    try:
        return parser.parse_args(argv)
    except argparse.ArgumentError as err:
        message = one_line(str(err))
        suggestion = usage_suggestion(message, parser._option_string_actions)
        raise UsageError(f"{parser.prog}: {message}{suggestion}") from None


# -- option groups shared by the jobs ------------------------------------------------------------------------
DTYPES = ("float32", "float16", "bfloat16")
NEGATIVE_SPECS = "none | null | text:<words> | ti:<file> | <embedding or bank file>"


def add_seeds(parser, flag: str = "--seeds", default="0", what: str = "every prompt is drawn once per seed"):
    """Seeds as `0,1,2` on the command line, a list or a number in a config; read with `parse_seeds`."""
    parser.add_argument(
        flag, type=str | int | list[int], default=default, help=f"comma-separated seeds; {what}"
    )


def parse_seeds(value, flag: str = "--seeds", error: type[RenegxError] = UsageError) -> list[int]:
    """`"0,1"`, `[0, 1]` or `0` as a non-empty list of distinct ints, else `error` (one line)."""
    try:
        if isinstance(value, str):
            seeds = [int(s) for s in value.split(",") if s.strip()]
        else:
            seeds = [int(s) for s in (value if isinstance(value, (list, tuple)) else [value])]
    except (TypeError, ValueError):
        raise error(f"{flag} must be comma-separated integers, got '{value}'") from None
    if not seeds:
        raise error(f"{flag} is empty")
    if len(set(seeds)) != len(seeds):
        raise error(f"{flag} repeats a seed: '{value}'")
    return seeds


def add_device(parser, dtype: bool = True) -> None:
    """`--device` (read with `resolve_device`), `--threads` (applied with `set_threads`) and, unless
    `dtype=False`, `--dtype` of the frozen weights."""
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    add_threads(parser)
    if dtype:
        parser.add_argument("--dtype", default="float32", choices=list(DTYPES))


THREADS_HELP = "CPU threads (default: half the cores this process may use, at least 1)"


def add_threads(parser) -> None:
    parser.add_argument("--threads", type=int | None, help=THREADS_HELP)


def default_threads() -> int:
    """The CPU threads of a run without `--threads`: half the cores it may use, at least 1. torch's default,
    every core, made the README's `renegx infer` on a shared 2-core machine 2.5-3x slower than one thread
    (`python -m bench.threads`, docs/benchmarks.md)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // 2)


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op CPU threads to `threads` (None: `default_threads()`); returns the number set."""
    import torch

    number = default_threads() if threads is None else threads
    if number < 1:
        raise UsageError(f"--threads must be >= 1, got {number}")
    torch.set_num_threads(number)
    return number


def add_negative_options(parser, many: bool) -> None:
    """What to guide against: one `--negative` (infer), or `--negatives` and repeated `--negative [NAME=]SPEC`
    (evaluate, several compared); `--bank-fallback` for a bank's missing prompts."""
    from renegx.negatives.bank import FALLBACK_CHOICES

    if many:
        parser.add_argument(
            "--negatives",
            type=str | list | dict,
            help=f"comma-separated ({NEGATIVE_SPECS}); in a config a list or a NAME: SPEC mapping",
        )
        parser.add_argument(
            "--negative",
            action="append",
            dest="negative_list",
            metavar="[NAME=]SPEC",
            help="one more negative, added to the config's or --negatives' (repeat; commas kept)",
        )
    else:
        parser.add_argument("--negative", default="null", help=NEGATIVE_SPECS)
    parser.add_argument(
        "--bank-fallback",
        default="global",
        choices=list(FALLBACK_CHOICES),
        help="with a bank: a prompt it does not hold gets its global row, or is an error",
    )
    parser.add_argument(
        "--strict-encoder",
        action="store_true",
        help="refuse a negative whose recorded text encoder fingerprint differs from the model's "
        "(default: a one-line warning)",
    )


SAMPLERS = ("cfg", "dnp", "answer", "vlm", "npc")


def add_sampling_options(parser) -> None:
    """How images are drawn (infer, evaluate): model, steps, scale, size, batch, the adaptive sampler."""
    parser.add_argument(
        "--model",
        help="'toy' (the shipped toy world), 'tiny' (random weights), 'toy-sibling', 'toy-flow', a local "
        "diffusers folder, a hub id or a single-file checkpoint (.safetensors, original SD/SDXL layout)",
    )
    parser.add_argument(
        "--model-config",
        help="with a single-file --model: a diffusers folder (or hub id) of its base model; default: "
        "diffusers' for its kind (e.g. the SD1.5 hub id, offline only from the local cache)",
    )
    parser.add_argument("--steps", type=int | None, help="DDIM steps (default: the negative file's, else 30)")
    parser.add_argument(
        "--guidance-scale", type=float | None, help="CFG scale (default: the negative file's, else 7.5)"
    )
    parser.add_argument("--batch-size", type=int, default=4, help="images per pipeline call (and judge call)")
    parser.add_argument("--height", type=int | None, help="default: the model's native size")
    parser.add_argument("--width", type=int | None, help="default: the model's native size")
    parser.add_argument("--clip-skip", type=int | None)
    parser.add_argument(
        "--sampler",
        choices=list(SAMPLERS),
        help="draw through renegx's composer (answer: a reconstruction); default: the diffusers pipeline",
    )
    parser.add_argument("--sampler-config", help="YAML mapping: `sampler:` and that sampler's options")
    parser.add_argument(
        "--sampler-opt", action="append", default=[], metavar="KEY=VALUE", help="a sampler option (repeat)"
    )


def run_printing_path(work: Callable[[], Path]) -> int:
    """A file command's ending: `work()` returns the path it wrote, printed on stdout (exit 0); an error is
    one line on stderr (exit 2), as `run_reporting_errors` prints it."""
    return run_reporting_errors(lambda: print(work()))


# Flags that name a config, and the job whose shipped configs a bare name refers to.
CONFIG_FLAGS = ("--config", "--sampler-config")


def names_a_config(argv: list[str]) -> bool:
    """Whether `argv` gives a `--config` (without one, a training job reads the shipped default)."""
    return any(word == "--config" or word.startswith("--config=") for word in argv)


def flag_value(argv: list[str], flag: str) -> str | None:
    """The value `argv` gives `flag` (`--flag V` or `--flag=V`; the last one wins), or None."""
    value = None
    for i, word in enumerate(argv):
        if word.startswith(f"{flag}="):
            value = word.partition("=")[2]
        elif word == flag and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def with_config_files(argv: list[str], job: str) -> list[str]:
    """`argv` with each config flag's value (`--config train/tiny`, `--config=tiny`, `--sampler-config
    samplers/vlm`) made a file path: an existing file stays as it is, a shipped name becomes its file in the
    installed package (`renegx.configs.resolve`, which raises one line naming the nearest shipped names)."""
    out = list(argv)
    for i, word in enumerate(out):
        flag, eq, value = word.partition("=")
        if flag not in CONFIG_FLAGS:
            continue
        kind, what = ("samplers", "sampler config") if flag == "--sampler-config" else (job, "config file")
        if eq:
            out[i] = f"{flag}={resolve(value, kind, what)}"
        elif i + 1 < len(out) and not out[i + 1].startswith("--"):
            out[i + 1] = str(resolve(out[i + 1], kind, what))
    return out


# Environment problems (full disk, read-only or forbidden folder) that are reported as one line.
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES}


def one_line_warnings(show: Callable) -> Callable:
    """A `warnings.showwarning` that prints renegx's own warnings as one line, `renegx: warning: <message>`,
    and hands any other to `show`."""

    def shown(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, RenegxWarning):
            print(f"renegx: warning: {one_line(str(message))}", file=file or sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    return shown


def renegx_cause(err: BaseException) -> RenegxError | None:
    """The renegx error that `err` was raised while handling (or from), if any."""
    while err is not None and not isinstance(err, RenegxError):
        err = err.__cause__ or err.__context__
    return err


RERUN = "what is finished is kept; rerun the same command to go on from there"
# Exit status of a job stopped by Ctrl-C (128 + SIGINT, as shells report it).
INTERRUPTED = 130


class Interrupted(Exception):
    """Ctrl-C, with what the job kept and how to go on (`message`, one line)."""


def run_reporting_errors(
    job: Callable[[], object], on_interrupt: str = "nothing was kept", ignore: tuple[str, ...] = ()
) -> int:
    """Run a job; a renegx error (bad input, missing file) becomes one line on stderr and exit code 2, a
    renegx warning one line on stderr, and Ctrl-C one line saying what was kept and how to go on
    (`on_interrupt`, or an `Interrupted`'s own), exit code 130. Warnings matching `HARMLESS_WARNINGS` or
    `ignore` (message regexes) are not shown."""
    quiet_third_party()
    try:
        with warnings.catch_warnings():
            for pattern in (*HARMLESS_WARNINGS, *ignore):
                warnings.filterwarnings("ignore", message=pattern)
            warnings.showwarning = one_line_warnings(warnings.showwarning)
            job()
    except KeyboardInterrupt:
        print(f"renegx: interrupted: {on_interrupt}", file=sys.stderr)
        return INTERRUPTED
    except Interrupted as stop:
        print(f"renegx: interrupted: {stop}", file=sys.stderr)
        return INTERRUPTED
    except (RenegxError, OutputError) as err:
        print(f"renegx: error: {err}", file=sys.stderr)
        return 2
    except argparse.ArgumentError as err:  # a bad option, config key or value (LightningCLI's parser)
        print(f"renegx: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except ValueError as err:  # jsonargparse wraps what a callback's constructor refused
        cause = renegx_cause(err)
        if cause is None:
            raise
        print(f"renegx: error: {cause}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in DISK_ERRORS:
            raise
        target = err.filename2 or err.filename
        print(f"renegx: error: cannot write {target}: {err.strerror}", file=sys.stderr)
        return 2
    return 0
