"""The toy world's model shapes, in the real diffusers/transformers classes (built untrained, seeded)."""

from __future__ import annotations

import torch

from renegx.toyworld.render import RESOLUTION

TEXT_HIDDEN = 64
LATENT_CHANNELS = 4
VAE_FACTOR = 4  # 32 px pictures, 8×8 latents


def text_encoder_config(vocab_size: int, bos: int, eos: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=4 * TEXT_HIDDEN,
        num_attention_heads=4,
        num_hidden_layers=3,
        max_position_embeddings=77,
        projection_dim=TEXT_HIDDEN,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
    )


def build_text_encoder(vocab_size: int, bos: int, eos: int, seed: int):
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(text_encoder_config(vocab_size, bos, eos))


def build_vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=16,
        sample_size=RESOLUTION,
    )


def build_unet(seed: int, channels: tuple[int, int] = (64, 128)):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=RESOLUTION // VAE_FACTOR,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        layers_per_block=1,
        block_out_channels=channels,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=16,
    )
