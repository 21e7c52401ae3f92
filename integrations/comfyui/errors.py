"""The pack's error: one line, shown by ComfyUI on the node that raised it."""

from __future__ import annotations

import renegx


class PackError(renegx.RenegxError):
    """A file or an input the ReNeg nodes cannot use as asked; the message says which and why."""
