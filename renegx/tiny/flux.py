"""`tiny-flux`: a tiny random-weight FLUX.1-dev in the real diffusers/transformers classes, built offline and
seeded.

As FLUX.1-dev: a `FluxTransformer2DModel` with the guidance embedding, over 2×2-packed latents of a 16-channel
VAE (with FLUX's scaling and shift factors), conditioned on T5 states and CLIP-L's pooled output; the
scheduler is FLUX's (`FlowMatchEulerDiscreteScheduler`, shift 3, resolution-dependent shifting). 64×64
pixels, 8×8 latents, 16 image tokens; the T5 sequence is padded to the pipeline's `max_sequence_length`.
"""

from __future__ import annotations

import torch

from renegx.tiny import (
    TINY_HIDDEN,
    TINY_SEED,
    byte_level_clip_tokenizer,
    tiny_clip_text_config,
)
from renegx.tiny.flow import tiny_flow_vae, tiny_t5_encoder, tiny_t5_tokenizer

TINY_FLUX_T5_WIDTH = 32
FLUX_VAE_FACTORS = {"scaling_factor": 0.3611, "shift_factor": 0.1159}  # FLUX.1's VAE config


def tiny_flux_components(seed: int = TINY_SEED) -> dict:
    """Transformer, VAE, CLIP-L and T5 text encoders and tokenizers, and scheduler of a toy FLUX.1-dev."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed + 20)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * 16,  # 2×2 patches of 16 latent channels
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TINY_FLUX_T5_WIDTH,
        pooled_projection_dim=TINY_HIDDEN,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    torch.manual_seed(seed + 21)
    text_encoder = CLIPTextModel(tiny_clip_text_config())
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return {
        "transformer": transformer,
        "vae": tiny_flow_vae(seed + 22, **FLUX_VAE_FACTORS),
        "text_encoder": text_encoder,
        "tokenizer": byte_level_clip_tokenizer(),
        "text_encoder_2": tiny_t5_encoder(seed + 23, TINY_FLUX_T5_WIDTH),
        "tokenizer_2": tiny_t5_tokenizer(),
        "scheduler": scheduler,
    }
