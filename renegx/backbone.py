"""Former home of the frozen backbone, kept for callers not yet moved: use `renegx.models.backbone` and
`renegx.models.load_backbone`."""

from renegx.models.backbone import ATTENTION, FROZEN_DTYPES, Backbone, decode_latents
from renegx.models.registry import load_backbone

__all__ = ["ATTENTION", "FROZEN_DTYPES", "Backbone", "decode_latents", "load_backbone"]
