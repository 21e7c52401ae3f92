"""What a person sees at renegx's entry points (train.py, infer.py, `python -m renegx.evaluate`).

Third-party lines known to be harmless are silenced, so that what is printed is renegx's own, and a bad
command line is one line that names the bad value, the choices and the nearest one ("did you mean").
"""

from __future__ import annotations

import argparse
import difflib
import functools
import logging
import re
import warnings

from renegx.errors import RenegxError


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
    # Lightning's advertisements for its cloud services, printed at every fit.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropMessages("💡 Tip:"))
    # Without torchvision, transformers picks the PIL image processors itself (renegx needs no torchvision).
    logging.getLogger("transformers.utils.import_utils").addFilter(
        _DropMessages("requires torchvision (not installed)")
    )
    # Lightning's own pytree helper uses a torch API torch has deprecated; nothing for a user to do.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    # A bar per model load ("Loading weights") between renegx's own lines.
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def did_you_mean(value: str, choices) -> str:
    """' (did you mean X?)' for the choice nearest to `value`, or '' when none is near."""
    nearest = difflib.get_close_matches(value, [str(choice) for choice in choices], n=1, cutoff=0.6)
    return f" (did you mean {nearest[0]}?)" if nearest else ""


def usage_suggestion(message: str, flags) -> str:
    """' (did you mean X?)' for an argparse error `message`: the choice nearest to an invalid value, or the
    flag among `flags` nearest to the first unrecognised one; '' when none is near."""
    choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if choice:
        return did_you_mean(choice.group(1), re.findall(r"'([^']*)'", choice.group(2)))
    unknown = re.match(r"unrecognized arguments: (.*)", message)
    given = re.findall(r"(?:^|\s)(--[^\s=]+)", unknown.group(1)) if unknown else []
    return did_you_mean(given[0], flags) if given else ""


class UsageError(RenegxError):
    """A bad command line: an unknown flag, a value not among the choices, a missing argument."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise `UsageError` (one line, with "did you mean") instead of printing
    the usage and exiting; the entry points print it as `renegx: error: ...` with exit code 2."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}{usage_suggestion(message, self._option_string_actions)}")
