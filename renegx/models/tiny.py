"""The tiny random-weight families, built offline and seeded from `renegx.tiny`'s builders, for the mechanics
and the tests; their pictures mean nothing. `tiny` is an SD1.x, `tiny-sdxl` an SDXL (its null is zeros),
`tiny-sd3` an SD3.5 and `tiny-flux` a FLUX.1-dev; their samplers' "auto" captioner and oracle are the tiny
random BLIP-2 and ViLT, also built offline.
"""

from __future__ import annotations

from renegx.models.flux import FluxFamily, refuse_clip_skip
from renegx.models.registry import register
from renegx.models.sd import SDFamily
from renegx.models.sd3 import SD3Family
from renegx.models.sdxl import SDXLFamily
from renegx.tiny import TINY_RESOLUTION
from renegx.tiny.flux import tiny_flux_components
from renegx.tiny.sd3 import tiny_sd3_components
from renegx.tiny.sdxl import tiny_sdxl_components


class TinyFamily(SDFamily):
    """`tiny`: an SD1.x built here, never downloaded."""

    name = "tiny"
    builtin = True
    sampler_externals = {"captioner": "blip2:tiny", "oracle": "vilt:tiny"}

    def components(self, model: str) -> dict:
        from renegx.tiny import tiny_sd_components

        return tiny_sd_components()


TINY = register(TinyFamily())


class BuiltHere:
    """A tiny family's models are built by `components`, never downloaded; its pipeline wraps its backbone."""

    builtin = True

    def load_pipeline(self, model: str, clip_skip: int | None = None, config: str | None = None):
        return self.load_backbone(model, clip_skip=clip_skip).pipeline()


class TinySDXLFamily(BuiltHere, SDXLFamily):
    """`tiny-sdxl`: its null is zeros."""

    name = "tiny-sdxl"

    def components(self, model: str) -> tuple[dict, bool]:
        return tiny_sdxl_components(), True


TINY_SDXL = register(TinySDXLFamily())


class TinySD3Family(BuiltHere, SD3Family):
    """`tiny-sd3`: its samplers' "auto" captioner and oracle are tiny too."""

    name = "tiny-sd3"
    sampler_externals = TINY.sampler_externals

    def components(self, model: str) -> dict:
        return tiny_sd3_components()


TINY_SD3 = register(TinySD3Family())


class TinyFluxFamily(FluxFamily):
    """`tiny-flux`: built here, never downloaded; its samplers' "auto" captioner and oracle are tiny too."""

    name = "tiny-flux"
    builtin = True
    sampler_externals = TINY.sampler_externals

    def load_pipeline(self, model: str, clip_skip: int | None = None, config: str | None = None):
        from diffusers import FluxPipeline

        refuse_clip_skip(clip_skip)
        pipe = FluxPipeline(**tiny_flux_components())
        pipe.default_sample_size = TINY_RESOLUTION // pipe.vae_scale_factor  # draws 64×64 by default
        pipe.set_progress_bar_config(disable=True)
        return pipe


TINY_FLUX = register(TinyFluxFamily())
