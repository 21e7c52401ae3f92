"""The toy world's generators as model families: `toy` (the shipped generator) and `toy-sibling` (the same
text encoder, VAE and tokenizer with the second UNet, stored in float16; a transfer target).

Both are SD1.x-layout models read from the shipped weights; the samplers' "auto" captioner and oracle are the
toy world's own (`renegx.samplers.toy_external`).
"""

from __future__ import annotations

import torch

from renegx.models.registry import register
from renegx.models.sd import SDFamily
from renegx.toyworld import SIBLING, TOY, generator_folder, sibling_unet_folder


class ToyFamily(SDFamily):
    name = TOY
    builtin = True
    sampler_externals = {"captioner": "toy", "oracle": "toy"}

    def components(self, model: str, prediction_type: str | None = None) -> dict:
        return super().components(str(generator_folder()), prediction_type)


class ToySiblingFamily(ToyFamily):
    name = SIBLING

    def components(self, model: str, prediction_type: str | None = None) -> dict:
        from diffusers import UNet2DConditionModel

        components = super().components(model, prediction_type)
        components["unet"] = UNet2DConditionModel.from_pretrained(
            sibling_unet_folder(), torch_dtype=torch.float32
        ).eval()
        return components


TOY_FAMILY, TOY_SIBLING_FAMILY = register(ToyFamily()), register(ToySiblingFamily())
