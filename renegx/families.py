"""Former home of the family lookup, kept for callers not yet moved: use `renegx.models.load_backbone`."""

from renegx.models.registry import load_backbone as load_family_backbone

__all__ = ["load_family_backbone"]
