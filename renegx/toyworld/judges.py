"""The former name of `renegx.toyworld.networks`, for the one import that still uses it
(`bench/toy_diagnosis.py`); delete this file once that import reads `renegx.toyworld.networks`."""

from renegx.toyworld.networks import HEADS, at_toy_resolution

__all__ = ["HEADS", "at_toy_resolution"]
