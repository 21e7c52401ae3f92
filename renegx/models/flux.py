"""FLUX.1: rectified flow over a T5 sequence and a pooled CLIP-L vector; negative `(1, n, D)` T5 rows (real
size `(1, 512, 4096)`) with a pooled `(1, P)` (`(1, 768)`), null `E("")`.

FLUX.1-dev is guidance-distilled: its `guidance` argument is an embedding, not classifier-free guidance, and
its pipeline draws without a negative. A negative enters by *true* CFG (`FluxPipeline(true_cfg_scale=w > 1,
negative_prompt_embeds=..., negative_pooled_prompt_embeds=...)`), one more transformer call per step. renegx
draws it with the samplers only (`renegx.samplers.adapters.FluxModel`) and does not train it.
"""

from __future__ import annotations

from renegx.models.loading import ModelError, from_pretrained
from renegx.models.registry import Family, NegativeShape, register


class FluxFamily(Family):
    """FLUX from a local diffusers folder or a hub id."""

    name = "flux"
    pipeline, pipeline_tag = "FluxPipeline", "Flux"
    scheduler = "flow"
    negative = NegativeShape(pooled=True)

    def load_pipeline(self, model: str, clip_skip: int | None = None, config: str | None = None):
        from diffusers import FluxPipeline

        refuse_clip_skip(clip_skip)
        return from_pretrained(FluxPipeline, model, what="FLUX model")


def refuse_clip_skip(clip_skip: int | None) -> None:
    """FLUX reads CLIP-L's pooled output only, which no `clip_skip` changes."""
    if clip_skip is not None:
        raise ModelError(
            f"FLUX takes CLIP-L's pooled output only; clip_skip {clip_skip} has no meaning there"
        )


FLUX = register(FluxFamily())
