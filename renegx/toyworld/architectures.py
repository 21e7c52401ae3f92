"""The toy world's model shapes, in the real diffusers/transformers classes (built untrained, seeded)."""

from __future__ import annotations

import torch

from renegx.tiny import autoencoder, clip_text_config
from renegx.toyworld.render import RESOLUTION

TEXT_HIDDEN = 64
LATENT_CHANNELS = 4
VAE_FACTOR = 4  # 32 px pictures, 8×8 latents


def text_encoder_config(vocab_size: int, bos: int, eos: int):
    return clip_text_config(TEXT_HIDDEN, 3, 4, vocab_size=vocab_size, token_ids=(bos, eos, eos))


def build_text_encoder(vocab_size: int, bos: int, eos: int, seed: int):
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(text_encoder_config(vocab_size, bos, eos))


def build_vae(seed: int):
    torch.manual_seed(seed)
    return autoencoder((32, 64, 64), 1, 16, latent_channels=LATENT_CHANNELS, sample_size=RESOLUTION)


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


FLOW_T5_ROWS = 0  # no T5: the conditioning is CLIP's 77 rows alone (zero T5 rows would only cost time)
FLOW_PATCH = 2  # 8×8 latents, 4×4 image tokens


def build_flow_transformer(seed: int, layers: int, heads: int):
    """`toy-flow`'s denoiser: an `SD3Transformer2DModel` over the toy VAE's latents, reading the toy text
    encoder twice (the CLIP-L and CLIP-G slots) as SD3 reads its two CLIPs: rows and pooled `2 × 64` wide."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    latent_size = RESOLUTION // VAE_FACTOR
    return SD3Transformer2DModel(
        sample_size=latent_size,
        patch_size=FLOW_PATCH,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        num_layers=layers,
        attention_head_dim=16,
        num_attention_heads=heads,
        joint_attention_dim=2 * TEXT_HIDDEN,
        caption_projection_dim=16 * heads,
        pooled_projection_dim=2 * TEXT_HIDDEN,
        pos_embed_max_size=latent_size // FLOW_PATCH,
    )


def flow_text_encoder(text_encoder):
    """The toy `CLIPTextModel` as the `CLIPTextModelWithProjection` SD3's pipeline reads (its pooled vector is
    the projection's output): the same weights, an identity projection."""
    from transformers import CLIPTextModelWithProjection

    encoder = CLIPTextModelWithProjection(text_encoder.config)  # projection_dim == hidden_size
    encoder.text_model.load_state_dict(text_encoder.state_dict())
    with torch.no_grad():
        encoder.text_projection.weight.copy_(torch.eye(text_encoder.config.hidden_size))
    return encoder.eval()


def flow_components(generator, transformer) -> dict:
    """`StableDiffusion3Pipeline` components of `toy-flow`: `transformer` with the toy generator's VAE,
    tokenizer and text encoder (in a diffusers folder `generator`), rectified-flow Euler without shift."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTextModel

    from renegx.toyworld.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(generator / "tokenizer")
    encoder = flow_text_encoder(CLIPTextModel.from_pretrained(generator / "text_encoder"))
    vae = AutoencoderKL.from_pretrained(generator / "vae").eval()
    vae.register_to_config(shift_factor=0.0)  # SD3's pipeline shifts latents; the toy VAE's are centred
    return {
        "transformer": transformer,
        "vae": vae,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=1.0),
        "text_encoder": encoder,
        "text_encoder_2": encoder,
        "text_encoder_3": None,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer,
        "tokenizer_3": None,
    }
