"""Where the toy world's weights live: inside the package, or `RENEGX_TOYWORLD` (a folder the build wrote)."""

import os
from pathlib import Path

SHIPPED = Path(__file__).resolve().parent / "weights"
WEIGHTS = Path(os.environ["RENEGX_TOYWORLD"]).expanduser() if os.environ.get("RENEGX_TOYWORLD") else SHIPPED
