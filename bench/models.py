"""The models the benchmarks run: the tiny test model, and SD1.5 / ViT-H-14 shapes with random weights.

The SD1.5-shaped world is built from the public config values of `stable-diffusion-v1-5` (UNet, VAE, CLIP
ViT-L/14 text encoder) and of OpenCLIP ViT-H-14 (the HPSv2 reward's tower), with seeded random weights: no
download, and the FLOPs and memory of the real models. Its pictures mean nothing. Both worlds use the tiny
byte-level tokenizer (its ids fit any CLIP vocabulary; the sequence length, 77, is what costs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from renegx.models import family_of
from renegx.prompts import read_prompts
from renegx.rewards import ClipScore, Reward
from renegx.tiny import (
    autoencoder,
    byte_level_clip_tokenizer,
    clip_l_text_config,
    clip_text_config,
    clip_vision_config,
    sd_ddim_scheduler,
    sd_unet,
)

WORLDS = ("tiny", "toy", "sd15")
SD_VAE_WIDTHS = (128, 256, 512, 512)  # SD1.x to SD3.5


@dataclass
class World:
    """Frozen components (as the model family builds them), a reward and prompts; each path takes copies."""

    name: str
    components: dict
    reward: Reward
    prompts: list[str]

    def describe(self) -> str:
        unet, vae = self.components["unet"], self.components["vae"]
        size = unet.config.sample_size
        pixels = size * 2 ** (len(vae.config.block_out_channels) - 1)
        reward_size = getattr(self.reward, "image_size", "?")
        return (
            f"{self.name}: UNet {_millions(unet)}M params (latents {unet.config.in_channels}×{size}×{size}), "
            f"VAE {_millions(vae)}M ({pixels}×{pixels} px), text encoder "
            f"{_millions(self.components['text_encoder'])}M, reward CLIP {_millions(self.reward)}M "
            f"({reward_size} px input)"
        )


def _millions(module: torch.nn.Module) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.3g}"


def build_world(
    name: str, prompt_pool: int = 16, resolution: int = 512, prompt_source: str | None = None
) -> World:
    """`tiny` (64×64, random), `toy` (the trained toy world, 32×32, its judge and prompts) or `sd15`
    (SD1.5 + ViT-H-14 shapes at `resolution` px, for GPUs). `prompt_source`: a builtin prompt set or a file
    in place of the world's own (toy: its training split; others: imagereward-refl)."""
    default = "toyworld-train" if name == "toy" else "imagereward-refl"
    prompts = read_prompts(prompt_source or default)[:prompt_pool]
    if name == "toy":
        from renegx.rewards import ToyPreference

        world = World("toy", family_of(name).components(name), ToyPreference(), prompts)
    elif name == "tiny":
        world = World("tiny", family_of(name).components(name), ClipScore(model="tiny"), prompts)
    elif name == "sd15":
        world = World(f"sd15-shaped@{resolution}", sd15_components(resolution), vit_h_14_reward(), prompts)
    else:
        raise ValueError(f"unknown model '{name}'; known: {', '.join(WORLDS)}")
    world.reward.encode_text(prompts)  # steady state: the reward's text features are cached per prompt
    return world


def sd15_components(resolution: int = 512, seed: int = 0) -> dict:
    """UNet, VAE, text encoder (SD1.5's config values), tiny tokenizer and DDIM scheduler; random weights."""
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = sd_unet((320, 640, 1280, 1280), 2, 768, 32, sample_size=resolution // 8)
    vae = autoencoder(SD_VAE_WIDTHS, 2, 32, latent_channels=4, sample_size=resolution, scaling_factor=0.18215)
    scheduler = sd_ddim_scheduler()
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": CLIPTextModel(clip_l_text_config()),
        "tokenizer": byte_level_clip_tokenizer(),
        "scheduler": scheduler,
    }


def vit_h_14_config():
    """OpenCLIP ViT-H-14 as a `transformers.CLIPConfig` (the tower of HPSv2.1), 224 px input."""
    from transformers import CLIPConfig

    text = clip_text_config(1024, 24, 16, vocab_size=49408, projection_dim=1024, hidden_act="gelu")
    vision = clip_vision_config(
        1280, 32, 16, image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu"
    )
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=1024)


def vit_h_14_reward(seed: int = 3) -> ClipScore:
    """`ClipScore`'s scoring code (preprocessing, cached text features, cosine) over a random ViT-H-14."""
    from transformers import CLIPModel

    reward = ClipScore(model="tiny")
    torch.manual_seed(seed)
    reward.model = CLIPModel(vit_h_14_config())
    reward.image_size = reward.model.config.vision_config.image_size
    reward.max_length = reward.model.config.text_config.max_position_embeddings
    return reward.freeze()


def sd35_medium_components() -> dict:
    """SD3.5-medium's transformer, VAE and three text encoders (their public config values), the tiny
    tokenizers and SD3.5's scheduler; random weights. Build them under `torch.device("meta")` to count and
    trace them without memory."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from renegx.tiny.flow import tiny_t5_tokenizer

    transformer = SD3Transformer2DModel(
        sample_size=128,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=24,
        attention_head_dim=64,
        num_attention_heads=24,
        joint_attention_dim=4096,
        caption_projection_dim=1536,
        pooled_projection_dim=2048,
        pos_embed_max_size=384,
        dual_attention_layers=tuple(range(13)),
        qk_norm="rms_norm",
    )
    vae = autoencoder(
        SD_VAE_WIDTHS,
        2,
        32,
        latent_channels=16,
        sample_size=1024,
        scaling_factor=1.5305,
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    clip_g = clip_text_config(1280, 32, 20, vocab_size=49408, projection_dim=1280, hidden_act="gelu")
    t5_xxl = T5Config(
        vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False,
    )  # fmt: skip
    return {
        "transformer": transformer,
        "vae": vae,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
        "text_encoder": CLIPTextModelWithProjection(clip_l_text_config()),
        "text_encoder_2": CLIPTextModelWithProjection(clip_g),
        "text_encoder_3": T5EncoderModel(t5_xxl),
        "tokenizer": byte_level_clip_tokenizer(),
        "tokenizer_2": byte_level_clip_tokenizer(),
        "tokenizer_3": tiny_t5_tokenizer(),
    }
