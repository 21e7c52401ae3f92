"""Tiny random-weight components in the real diffusers/transformers classes.

They exercise every code path offline in seconds (tests, `--model tiny`); their pictures mean nothing.
The tokenizer is byte-level CLIP BPE written to local files, so no hub is ever asked.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

TINY_SEED = 0
TINY_RESOLUTION = 64
TINY_HIDDEN = 32
TINY_TOKEN_IDS = (512, 513, 513)  # the byte-level tokenizer's begin, end and padding ids


def _bytes_to_unicode() -> dict[int, str]:
    """The reversible byte → printable-character map of byte-level BPE."""
    printable = set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256))
    mapping, shifted = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + shifted)
            shifted += 1
    return mapping


def byte_level_clip_tokenizer(max_length: int = 77):
    """A `CLIPTokenizer` over single bytes (514 ids, no merges) built from files written here."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with tempfile.TemporaryDirectory() as folder:
        vocab_file, merges_file = Path(folder, "vocab.json"), Path(folder, "merges.txt")
        vocab_file.write_text(json.dumps(vocab))
        merges_file.write_text("#version: 0.2\n")
        return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=max_length)


def clip_text_config(
    width: int,
    layers: int,
    heads: int,
    *,
    mlp: int | None = None,
    vocab_size: int = 514,
    projection_dim: int | None = None,
    hidden_act: str = "quick_gelu",
    token_ids: tuple[int, int, int] = TINY_TOKEN_IDS,
):
    """A CLIP text tower `width` wide (MLP 4 × width unless given), `layers` deep, 77 positions; token ids
    (begin, end, padding) of the byte-level tokenizer unless given."""
    from transformers import CLIPTextConfig

    bos, eos, pad = token_ids
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=mlp or 4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act=hidden_act,
        projection_dim=projection_dim or width,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    )


def clip_vision_config(
    width: int,
    layers: int,
    heads: int,
    *,
    image_size: int,
    patch_size: int,
    projection_dim: int,
    mlp: int | None = None,
    hidden_act: str = "quick_gelu",
):
    """A CLIP ViT `width` wide (MLP 4 × width unless given) over `image_size` px in `patch_size` patches."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=mlp or 4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
        hidden_act=hidden_act,
        projection_dim=projection_dim,
    )


def clip_l_text_config():
    """CLIP ViT-L/14's text tower (SD1.x's encoder, SD3's and FLUX's first), for real-size random models."""
    return clip_text_config(768, 12, 12, vocab_size=49408)


def tiny_clip_text_config(hidden_size: int = TINY_HIDDEN, projection_dim: int | None = None):
    return clip_text_config(hidden_size, 2, 4, mlp=37, projection_dim=projection_dim)


def tiny_sd_components(seed: int = TINY_SEED, prediction_type: str = "epsilon") -> dict:
    """UNet, VAE, text encoder, tokenizer and DDIM scheduler of a 64×64 toy SD1.x, seeded."""
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = sd_unet((32, 64), 1, TINY_HIDDEN, 8, sample_size=TINY_RESOLUTION // 8)
    torch.manual_seed(seed + 1)
    vae = autoencoder((16, 32, 32, 32), 1, 16, latent_channels=4, sample_size=TINY_RESOLUTION)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(tiny_clip_text_config())
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": byte_level_clip_tokenizer(),
        "scheduler": sd_ddim_scheduler(prediction_type),
    }


def sd_unet(
    block_out_channels: tuple[int, ...],
    layers_per_block: int,
    cross_attention_dim: int,
    norm_num_groups: int,
    **config,
):
    """Stable Diffusion 1.x's UNet architecture (cross-attention at every width but the deepest, 4 latent
    channels in and out, heads of 8) at the given widths, random weights; `config` sets the rest."""
    from diffusers import UNet2DConditionModel

    attention = len(block_out_channels) - 1
    return UNet2DConditionModel(
        in_channels=4,
        out_channels=4,
        layers_per_block=layers_per_block,
        block_out_channels=block_out_channels,
        down_block_types=("CrossAttnDownBlock2D",) * attention + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * attention,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=norm_num_groups,
        **config,
    )


def autoencoder(block_out_channels: tuple[int, ...], layers_per_block: int, norm_num_groups: int, **config):
    """Stable Diffusion's VAE architecture (an `AutoencoderKL` of one encoder and one decoder block per width,
    RGB in and out) at the given widths, random weights; `config` sets the rest (latent channels, sample
    size, scaling and shift factors, quant convs)."""
    from diffusers import AutoencoderKL

    levels = len(block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=block_out_channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        layers_per_block=layers_per_block,
        norm_num_groups=norm_num_groups,
        **config,
    )


def sd_ddim_scheduler(prediction_type: str = "epsilon"):
    """The DDIM scheduler of Stable Diffusion 1.x (scaled-linear betas, leading spacing, offset 1)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def tiny_clip_model(seed: int = TINY_SEED + 3, image_size: int = 32, projection_dim: int = 16):
    """A seeded `transformers.CLIPModel` with the tiny text tower and a 2-layer ViT."""
    from transformers import CLIPConfig, CLIPModel

    vision = clip_vision_config(
        32, 2, 4, mlp=37, image_size=image_size, patch_size=8, projection_dim=projection_dim
    )
    config = CLIPConfig(
        text_config=tiny_clip_text_config(projection_dim=projection_dim).to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    return CLIPModel(config)
