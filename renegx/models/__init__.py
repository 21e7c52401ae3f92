"""The model families renegx knows, and the one way to load a model by name (see docs/design.md §4).

family_of("tiny-sdxl")          # its Family: pipeline class, scheduler kind, negative shape, null
load_backbone("toy")            # the frozen training backbone of any family that trains
"""

from renegx.models.loading import ModelError
from renegx.models.registry import (
    Family,
    NegativeShape,
    families,
    family_of,
    family_of_pipeline,
    load_backbone,
)

__all__ = [
    "Family",
    "ModelError",
    "NegativeShape",
    "families",
    "family_of",
    "family_of_pipeline",
    "load_backbone",
]
