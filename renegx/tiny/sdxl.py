"""`tiny-sdxl`: a tiny random-weight SDXL in the real diffusers/transformers classes, built offline and
seeded.

Like SDXL it has two CLIP text encoders (the second with a projection giving the pooled embedding), a UNet
conditioned on their concatenated states, the pooled vector and `add_time_ids`; the VAE, the first encoder and
the tokenizers are tiny SD's (SDXL's CLIP-L is SD1.x's too). 64×64 pixels, 8×8 latents.
"""

from __future__ import annotations

import torch

from renegx.tiny import (
    TINY_HIDDEN,
    TINY_SEED,
    byte_level_clip_tokenizer,
    tiny_clip_text_config,
    tiny_sd_components,
)

TINY_SDXL_TIME_EMBED = 8


def tiny_sdxl_components(seed: int = TINY_SEED) -> dict:
    """UNet, VAE, two text encoders, two tokenizers and DDIM scheduler of a toy SDXL (hidden 32 + 32)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModelWithProjection

    sd = tiny_sd_components(seed)
    torch.manual_seed(seed + 10)
    unet = UNet2DConditionModel(
        sample_size=sd["unet"].config.sample_size,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TINY_SDXL_TIME_EMBED,
        projection_class_embeddings_input_dim=6 * TINY_SDXL_TIME_EMBED + TINY_HIDDEN,
        cross_attention_dim=2 * TINY_HIDDEN,
        norm_num_groups=8,
    )
    torch.manual_seed(seed + 11)
    text_encoder_2 = CLIPTextModelWithProjection(tiny_clip_text_config())
    return {
        "unet": unet,
        "vae": sd["vae"],
        "text_encoder": sd["text_encoder"],
        "text_encoder_2": text_encoder_2,
        "tokenizer": sd["tokenizer"],
        "tokenizer_2": byte_level_clip_tokenizer(),
        "scheduler": sd["scheduler"],
    }
