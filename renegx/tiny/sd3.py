"""`tiny-sd3`: a tiny random-weight SD3.5 in the real diffusers/transformers classes, built offline and
seeded.

As SD3.5-medium: an `SD3Transformer2DModel` with 2×2 patches, RMS-normed queries and keys and a dual-attention
block, over a 16-channel VAE (with SD3's scaling and shift factors); CLIP-L and CLIP-G with projections (their
penultimate states concatenated and zero-padded to T5's width, their projections the pooled vector) and a T5
encoder; SD3's scheduler (`FlowMatchEulerDiscreteScheduler`, shift 3). 64×64 pixels, 8×8 latents, 16 image
tokens, conditionings of 77 + 256 rows.
"""

from __future__ import annotations

import torch

from renegx.tiny import (
    TINY_HIDDEN,
    TINY_RESOLUTION,
    TINY_SEED,
    byte_level_clip_tokenizer,
    tiny_clip_text_config,
)
from renegx.tiny.flow import TINY_LATENT_CHANNELS, tiny_flow_vae, tiny_t5_encoder, tiny_t5_tokenizer

TINY_SD3_T5_WIDTH = 3 * TINY_HIDDEN  # wider than CLIP-L ‖ CLIP-G (64), as SD3.5's 4096 is than 2048
SD3_VAE_FACTORS = {"scaling_factor": 1.5305, "shift_factor": 0.0609}  # SD3's and SD3.5's VAE config


def tiny_sd3_components(seed: int = TINY_SEED) -> dict:
    """Transformer, VAE, three text encoders and tokenizers, and scheduler of a toy SD3.5."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed + 30)
    transformer = SD3Transformer2DModel(
        sample_size=TINY_RESOLUTION // 8,
        patch_size=2,
        in_channels=TINY_LATENT_CHANNELS,
        out_channels=TINY_LATENT_CHANNELS,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=TINY_SD3_T5_WIDTH,
        caption_projection_dim=4 * 8,
        pooled_projection_dim=2 * TINY_HIDDEN,
        pos_embed_max_size=16,
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )
    clip = []
    for offset in (31, 32):
        torch.manual_seed(seed + offset)
        clip.append(CLIPTextModelWithProjection(tiny_clip_text_config()))
    return {
        "transformer": transformer,
        "vae": tiny_flow_vae(seed + 33, **SD3_VAE_FACTORS),
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
        "text_encoder": clip[0],
        "text_encoder_2": clip[1],
        "text_encoder_3": tiny_t5_encoder(seed + 34, TINY_SD3_T5_WIDTH),
        "tokenizer": byte_level_clip_tokenizer(),
        "tokenizer_2": byte_level_clip_tokenizer(),
        "tokenizer_3": tiny_t5_tokenizer(),
    }
