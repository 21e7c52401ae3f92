"""SD1.x/2.x: a UNet, a VAE, one CLIP text encoder and its tokenizer, DDIM; negative `(1, 77, D)`, null
`E("")`.

The family of every folder or hub id no other family claims, and of SD1.x/2.x single-file checkpoints.
"""

from __future__ import annotations

from pathlib import Path

from renegx.models.backbone import Backbone
from renegx.models.loading import ModelError, from_pretrained, source_of
from renegx.models.registry import Family, register
from renegx.models.single_file import is_single_file, load_single_file

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

    def components(self, model: str, prediction_type: str | None = None) -> dict:
        """The frozen components of `model` in the SD1.x/2.x layout (a built-in family overrides this)."""
        return with_prediction_type(load_components(model), prediction_type)

    def load_backbone(
        self,
        model: str,
        clip_skip: int | None = None,
        prediction_type: str | None = None,
        config: str | None = None,
    ):
        if is_single_file(model):  # read with `config` (`family_of` gives no built-in family a file)
            pipe = load_single_file(model, self.pipeline, config)
            components = {name: getattr(pipe, name) for name in COMPONENT_FOLDERS}
            components = with_prediction_type(components, prediction_type)
        else:
            components = self.components(model, prediction_type)
        return Backbone(components, name=model, clip_skip=clip_skip)


SD = register(SDFamily(), default=True)
