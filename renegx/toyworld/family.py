"""The toy world's generators as model families: `toy` (the shipped generator), `toy-sibling` (the same
text encoder, VAE and tokenizer with the second UNet, stored in float16; a transfer target) and `toy-flow`
(the same text encoder, VAE and tokenizer with an SD3 transformer trained by rectified flow, float16 on disk).

`toy` and `toy-sibling` are SD1.x-layout models, `toy-flow` an SD3-layout one (`StableDiffusion3Pipeline`,
the toy text encoder in both CLIP slots, no T5); the samplers' "auto" captioner and oracle are the toy world's
own (`renegx.samplers.toy_external`).
"""

from __future__ import annotations

import torch

from renegx.models.registry import register
from renegx.models.sd import SDFamily
from renegx.models.sd3 import SD3Family
from renegx.toyworld import FLOW, SIBLING, TOY, flow_transformer_folder, generator_folder, sibling_unet_folder
from renegx.toyworld.architectures import FLOW_T5_ROWS


class ToyFamily(SDFamily):
    name = TOY
    builtin = True
    sampler_externals = {"captioner": "toy", "oracle": "toy"}

    def components(self, model: str) -> dict:
        return super().components(str(generator_folder()))


class ToySiblingFamily(ToyFamily):
    name = SIBLING

    def components(self, model: str) -> dict:
        from diffusers import UNet2DConditionModel

        components = super().components(model)
        components["unet"] = UNet2DConditionModel.from_pretrained(
            sibling_unet_folder(), torch_dtype=torch.float32
        ).eval()
        return components


def toy_flow_components() -> dict:
    """`toy-flow`'s `StableDiffusion3Pipeline` components, the transformer read as float32."""
    from diffusers import SD3Transformer2DModel

    from renegx.toyworld.architectures import flow_components

    transformer = SD3Transformer2DModel.from_pretrained(flow_transformer_folder(), torch_dtype=torch.float32)
    return flow_components(generator_folder(), transformer.eval())


class ToyFlowFamily(SD3Family):
    name = FLOW
    builtin = True
    sampler_externals = ToyFamily.sampler_externals
    t5_rows = FLOW_T5_ROWS

    def components(self, model: str) -> dict:
        return toy_flow_components()

    def load_pipeline(self, model: str, clip_skip: int | None = None, config: str | None = None):
        return self.load_backbone(model, clip_skip=clip_skip).pipeline()


TOY_FAMILY, TOY_SIBLING_FAMILY = register(ToyFamily()), register(ToySiblingFamily())
TOY_FLOW_FAMILY = register(ToyFlowFamily())
