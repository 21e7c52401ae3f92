"""The one base class of renegx's user-facing errors: the entry points print these as one line."""


class RenegxError(ValueError):
    """A bad input or a missing file, reported to the user as a single line."""
