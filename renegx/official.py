"""The official ReNeg embedding files and the models they belong to.

The released files (`{sd1.4,sd1.5,sd2.1,pixart-alpha}_reneg_emb.bin`) are bare `torch.save`d float32 tensors
with no metadata: nothing but the file name ties one to its model. `OFFICIAL_MODELS` records what each was
trained for, so a converted file carries the same provenance as one renegx trains.

The PixArt-α file has no attention mask, yet PixArt pipelines need `negative_prompt_attention_mask`; which
mask ReNeg trained with is not published. The default here attends to all 120 rows as the file gives them
(`attention_mask="all"`); `"empty"` is the empty prompt's mask instead (its one `</s>` token: `[1, 0, …]`).

`convert_official` (`python -m renegx.official convert`, also reachable as `python -m renegx.embedding
convert`) turns an official file into a renegx `.safetensors` with that provenance.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from renegx.embedding import (
    ATTENTION_MASKS,
    EMBEDS_KEY,
    MASK_KEY,
    EmbeddingError,
    NegativeEmbedding,
    missing_attention_mask,
    read_tensor_file,
)

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
    text_encoder_id: str  # `renegx.embedding.text_encoder_id` of that encoder
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
        OfficialModel(
            "sd1.4",
            "CompVis/stable-diffusion-v1-4",
            (1, 77, 768),
            "CLIPTextModel",
            CLIP_L_ID,
            "openai/clip-vit-large-patch14",
            "epsilon",
        ),
        OfficialModel(
            "sd1.5",
            "stable-diffusion-v1-5/stable-diffusion-v1-5",
            (1, 77, 768),
            "CLIPTextModel",
            CLIP_L_ID,
            "openai/clip-vit-large-patch14",
            "epsilon",
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


def convert_official(
    source: str | os.PathLike, target: str | os.PathLike, base_model: str, attention_mask: str = "all"
) -> Path:
    """Convert an official ReNeg `.bin` (a bare tensor) to a renegx `.safetensors` with its provenance.

    `base_model` is a preset (`sd1.4`, `sd1.5`, `sd2.1`, `pixart-alpha`) or its hub id; the tensor must have
    that model's shape. T5 models get `negative_prompt_attention_mask` (`attention_mask`: `all` or `empty`,
    see `renegx.official`).
    """
    model = official_model(base_model)
    if model is None:
        raise EmbeddingError(f"unknown --base-model '{base_model}'; known: {', '.join(OFFICIAL_MODELS)}")
    if attention_mask not in ATTENTION_MASKS:
        known = ", ".join(ATTENTION_MASKS)
        raise EmbeddingError(f"unknown --attention-mask '{attention_mask}'; known: {known}")
    source = Path(source)
    if not source.is_file():
        raise EmbeddingError(f"embedding file not found: {source}")
    if source.suffix not in (".bin", ".pt"):
        raise EmbeddingError(f"expected an official ReNeg .bin or .pt file to convert, got {source}")
    tensors = read_tensor_file(source)
    embeds = tensors[EMBEDS_KEY]
    shape = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else None
    if shape != model.shape:
        raise EmbeddingError(
            f"{source}: a {model.name} embedding has shape {model.shape}, "
            f"got {shape or type(embeds).__name__}"
        )
    metadata = {**model.metadata(), "source_file": source.name}
    mask = tensors.get(MASK_KEY)
    if model.needs_attention_mask and mask is None:
        mask = missing_attention_mask(model.shape[1], attention_mask)
        metadata["attention_mask"] = attention_mask
    embedding = NegativeEmbedding(embeds.float(), attention_mask=mask, metadata=metadata)
    return embedding.save(target)


def main(argv: list[str] | None = None, prog: str = "python -m renegx.official") -> int:
    """`python -m renegx.official convert old.bin new.safetensors --base-model sd1.5` (also
    `python -m renegx.embedding convert`)."""
    from renegx.terminal import OneLineArgumentParser, run_printing_path  # one-line errors

    parser = OneLineArgumentParser(prog=prog, description="Negative embedding files.")
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser(
        "convert", help="an official ReNeg .bin -> a renegx .safetensors with its provenance"
    )
    convert.add_argument("source", help="the official .bin (a bare tensor)")
    convert.add_argument("target", help="the .safetensors to write")
    convert.add_argument(
        "--base-model", required=True, help=f"one of {', '.join(OFFICIAL_MODELS)} (or its id)"
    )
    convert.add_argument(
        "--attention-mask",
        default="all",
        help="T5 models (PixArt-α): 'all' rows attended (default) or the empty prompt's mask ('empty')",
    )

    def convert():
        args = parser.parse_args(argv)
        return convert_official(args.source, args.target, args.base_model, args.attention_mask)

    return run_printing_path(convert)


if __name__ == "__main__":
    sys.exit(main())
