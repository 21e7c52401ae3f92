"""SD3: rectified flow over CLIP-L, CLIP-G and an optional T5; negative `(1, 77 + T5 slots, D)` with a
pooled `(1, P)`, null `E("")`. Drawn by the samplers only (Euler flow steps); renegx does not train it."""

from __future__ import annotations

from renegx.models.registry import Family, NegativeShape, register


class SD3Family(Family):
    name = "sd3"
    pipeline, pipeline_tag = "StableDiffusion3Pipeline", "StableDiffusion3"
    scheduler = "flow"
    negative = NegativeShape(pooled=True)


SD3 = register(SD3Family())
