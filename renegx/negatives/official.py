"""The official ReNeg embedding files and the models they belong to.

The released files (`{sd1.4,sd1.5,sd2.1,pixart-alpha}_reneg_emb.bin`) are bare `torch.save`d float32 tensors
with no metadata: nothing but the file name ties one to its model. `OFFICIAL_MODELS` records what each was
trained for, so a converted file carries the same provenance as one renegx trains.

The PixArt-α file has no attention mask, yet PixArt pipelines need `negative_prompt_attention_mask`; which
mask ReNeg trained with is not published. The default here attends to all 120 rows as the file gives them
(`attention_mask="all"`); `"empty"` is the empty prompt's mask instead (its one `</s>` token: `[1, 0, …]`).

`renegx.negatives.embedding.convert_official` (the `renegx convert` command) turns an official file into a
renegx `.safetensors` with that provenance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from renegx.negatives.format import EMBEDS_KEY, MASK_KEY, missing_attention_mask

CLIP_L_ID = "clip_text_model/h768/l12/v49408"
OPENCLIP_H_ID = "clip_text_model/h1024/l23/v49408"  # SD2.x keeps 23 of OpenCLIP-H's 24 layers
T5_XXL_ID = "t5/h4096/l24/v32128"


@dataclass(frozen=True)
class OfficialModel:
    """What one official ReNeg file was trained for."""

    name: str
    base_model: str
    shape: tuple[int, int, int]
    text_encoder: str  # the encoder class
    text_encoder_id: str  # `renegx.negatives.embedding.text_encoder_id` of that encoder
    text_encoder_source: str
    prediction_type: str | None
    needs_attention_mask: bool = False

    def metadata(self) -> dict[str, str]:
        """String metadata of a renegx file converted from this model's official `.bin`."""
        metadata = {
            "base_model": self.base_model,
            "text_encoder": self.text_encoder,
            "text_encoder_id": self.text_encoder_id,
            "text_encoder_source": self.text_encoder_source,
            "text_encoder_hidden_size": str(self.shape[2]),
            "text_encoder_max_length": str(self.shape[1]),
            "source_format": "reneg-bin",
            "source_model": self.name,
            "guidance_scale": "7.5",
            "num_inference_steps": "30",
        }
        if self.needs_attention_mask:
            metadata["max_sequence_length"] = str(self.shape[1])
        else:
            metadata["clip_skip"] = "none"
        if self.prediction_type is not None:
            metadata["prediction_type"] = self.prediction_type
        return metadata


OFFICIAL_MODELS = {
    model.name: model
    for model in (
        *(
            OfficialModel(
                name,
                repo,
                (1, 77, 768),
                "CLIPTextModel",
                CLIP_L_ID,
                "openai/clip-vit-large-patch14",
                "epsilon",
            )
            for name, repo in (  # SD1.4 and SD1.5 share CLIP-L
                ("sd1.4", "CompVis/stable-diffusion-v1-4"),
                ("sd1.5", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
            )
        ),
        OfficialModel(
            "sd2.1",
            "stabilityai/stable-diffusion-2-1",
            (1, 77, 1024),
            "CLIPTextModel",
            OPENCLIP_H_ID,
            "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
            "v_prediction",
        ),
        OfficialModel(
            "pixart-alpha",
            "PixArt-alpha/PixArt-XL-2-1024-MS",
            (1, 120, 4096),
            "T5EncoderModel",
            T5_XXL_ID,
            "DeepFloyd/t5-v1_1-xxl",
            None,
            needs_attention_mask=True,
        ),
    )
}


def official_model(name: str) -> OfficialModel | None:
    """The entry for a preset name (`sd1.5`) or a base-model id (`stabilityai/stable-diffusion-2-1`)."""
    lowered = name.strip().lower()
    for model in OFFICIAL_MODELS.values():
        if lowered in (model.name, model.base_model.lower()):
            return model
    return None


def official_model_for_shape(shape: tuple[int, ...]) -> OfficialModel | None:
    """The first entry whose file has this shape (SD1.4 and SD1.5 share a text encoder, so either serves)."""
    return next((model for model in OFFICIAL_MODELS.values() if model.shape == tuple(shape)), None)


def official_tensors(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A torch file's tensors, with the default attention mask when its shape is the official PixArt-α one.

    Nothing else is inferred from the shape (only `convert --base-model` records a text encoder).
    """
    metadata = {"source_format": "reneg-bin"}
    embeds = tensors.get(EMBEDS_KEY)
    model = official_model_for_shape(tuple(embeds.shape)) if isinstance(embeds, torch.Tensor) else None
    if model is not None and model.needs_attention_mask and MASK_KEY not in tensors:
        tensors = {**tensors, MASK_KEY: missing_attention_mask(model.shape[1])}
        metadata["attention_mask"] = "all"
    return tensors, metadata
