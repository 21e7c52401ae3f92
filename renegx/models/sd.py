"""SD1.x/2.x: a UNet, a VAE, one CLIP text encoder and its tokenizer, DDIM; negative `(1, 77, D)`, null
`E("")`.

The family of every folder or hub id no other family claims, and of SD1.x/2.x single-file checkpoints.
"""

from __future__ import annotations

from pathlib import Path

from renegx.models.backbone import Backbone
from renegx.models.loading import ModelError, from_pretrained, source_of
from renegx.models.registry import Family, register

COMPONENT_FOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def load_components(model: str) -> dict:
    """The SD1.x/2.x components of a local diffusers folder or a hub id."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    source = source_of(model)
    folder = Path(source[0])
    for sub in COMPONENT_FOLDERS if folder.is_dir() else ():
        if not (folder / sub).is_dir():
            raise ModelError(f"model folder {folder} has no '{sub}/' subfolder (expected diffusers layout)")
    classes = (UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIPTokenizer, DDIMScheduler)
    return {
        sub: from_pretrained(cls, model, source=source, subfolder=sub)
        for sub, cls in zip(COMPONENT_FOLDERS, classes, strict=True)
    }


def with_prediction_type(components: dict, prediction_type: str | None) -> dict:
    """`components` with their scheduler's prediction type overridden when one is given."""
    if prediction_type is not None:
        components["scheduler"].register_to_config(prediction_type=prediction_type)
    return components


class SDFamily(Family):
    """SD1.x/2.x from a local diffusers folder, a hub id or a single file (ε or v prediction)."""

    name = "sd"
    trains = True

    def components(self, model: str) -> dict:
        """The frozen components of `model` in the SD1.x/2.x layout (a built-in family overrides this)."""
        return load_components(model)

    def components_of(self, pipe) -> dict:
        return {name: getattr(pipe, name) for name in COMPONENT_FOLDERS}

    def backbone(self, components: dict, name: str, clip_skip: int | None, prediction_type: str | None):
        return Backbone(with_prediction_type(components, prediction_type), name=name, clip_skip=clip_skip)


SD = register(SDFamily(), default=True)
