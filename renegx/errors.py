"""The one base class of renegx's user-facing errors: the entry points print these as one line."""

from __future__ import annotations

import difflib


class RenegxError(ValueError):
    """A bad input or a missing file, reported to the user as a single line."""


class RenegxWarning(UserWarning):
    """Something a run goes on despite; the entry points print it as one line, `renegx: warning: ...`."""


def first_line(error: BaseException) -> str:
    """The telling line of an exception's message, for a one-line error: its first line, or the one that says
    what is unsupported (torch's weights_only errors are paragraphs that say so further down)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    telling = [line for line in lines if "unsupported" in line.lower()]
    return (telling or lines or [type(error).__name__])[0]


def did_you_mean(value: str, choices) -> str:
    """' (did you mean X?)' for the choice nearest to `value`, or '' when none is near."""
    nearest = difflib.get_close_matches(value, [str(choice) for choice in choices], n=1, cutoff=0.6)
    return f" (did you mean {nearest[0]}?)" if nearest else ""
