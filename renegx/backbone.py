"""The frozen diffusion model (UNet, VAE, text encoder, tokenizer, DDIM scheduler) and cached prompt encoding.

`load_backbone("tiny")` builds seeded random-weight components offline; any other name is a local diffusers
folder or a hub id (honouring `HF_HUB_OFFLINE`). Nothing here is ever trained.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from renegx.errors import RenegxError

COMPONENT_FOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class BackboneError(RenegxError):
    pass


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _load_components(model: str) -> dict:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(model).expanduser()
    if model.startswith(("/", "./", "../", "~")) or folder.exists():
        if not folder.is_dir():
            raise BackboneError(f"model folder not found: {folder}")
        for sub in COMPONENT_FOLDERS:
            if not (folder / sub).is_dir():
                raise BackboneError(
                    f"model folder {folder} has no '{sub}/' subfolder (expected diffusers layout)"
                )
        source, local_only = str(folder), True
    else:
        source, local_only = model, _offline()
    try:
        return {
            "unet": UNet2DConditionModel.from_pretrained(
                source, subfolder="unet", local_files_only=local_only
            ),
            "vae": AutoencoderKL.from_pretrained(source, subfolder="vae", local_files_only=local_only),
            "text_encoder": CLIPTextModel.from_pretrained(
                source, subfolder="text_encoder", local_files_only=local_only
            ),
            "tokenizer": CLIPTokenizer.from_pretrained(
                source, subfolder="tokenizer", local_files_only=local_only
            ),
            "scheduler": DDIMScheduler.from_pretrained(
                source, subfolder="scheduler", local_files_only=local_only
            ),
        }
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        hint = " (offline: download it first or pass a local folder)" if local_only else ""
        raise BackboneError(f"cannot load model '{model}'{hint}: {first_line}") from err


class Backbone(nn.Module):
    """Frozen SD1.x/2.x components with a per-prompt cache of text-encoder outputs.

    `encode_prompts` returns `(B, L, D)` text-encoder outputs exactly as diffusers' `encode_prompt`
    computes `prompt_embeds` (with `clip_skip`: hidden state `-(clip_skip + 1)` through the final layer norm).
    """

    def __init__(self, components: dict, name: str, clip_skip: int | None = None):
        super().__init__()
        from diffusers import DDIMScheduler

        if clip_skip is not None and clip_skip < 0:
            raise BackboneError(f"clip_skip must be >= 0, got {clip_skip}")
        self.unet = components["unet"]
        self.vae = components["vae"]
        self.text_encoder = components["text_encoder"]
        self.tokenizer = components["tokenizer"]
        self.scheduler = DDIMScheduler.from_config(components["scheduler"].config)
        self.name = name
        self.clip_skip = clip_skip
        self.requires_grad_(False)
        self.eval()
        self._prompt_cache: dict[str, torch.Tensor] = {}

    def train(self, mode: bool = True) -> Backbone:
        return super().train(False)

    @property
    def hidden_size(self) -> int:
        return self.text_encoder.config.hidden_size

    @property
    def max_length(self) -> int:
        return self.tokenizer.model_max_length

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        return (self.unet.config.in_channels, size, size)

    @property
    def vae_scaling_factor(self) -> float:
        return self.vae.config.scaling_factor

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.text_encoder.device)
        if self.clip_skip is None:
            return self.text_encoder(ids)[0]
        out = self.text_encoder(ids, output_hidden_states=True)
        hidden = out.hidden_states[-(self.clip_skip + 1)]
        return self.text_encoder.text_model.final_layer_norm(hidden)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """`(B, L, D)` embeddings; each distinct prompt goes through the text encoder once per run."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._prompt_cache))
        if missing:
            for prompt, embeds in zip(missing, self._encode(missing), strict=True):
                self._prompt_cache[prompt] = embeds
        device = self.text_encoder.device
        return torch.stack([self._prompt_cache[p].to(device) for p in prompts])

    def null_embedding(self) -> torch.Tensor:
        """`E("")`, shape `(1, L, D)`: the CFG baseline and the init of a learned negative."""
        return self.encode_prompts([""]).clone()

    def text_encoder_metadata(self) -> dict[str, str]:
        return {
            "text_encoder": type(self.text_encoder).__name__,
            "text_encoder_hidden_size": str(self.hidden_size),
            "text_encoder_max_length": str(self.max_length),
            "clip_skip": "none" if self.clip_skip is None else str(self.clip_skip),
            "prediction_type": self.prediction_type,
        }

    @torch.no_grad()
    def decode_to_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → images `(B, 3, H, W)` in [0, 1], without grad (inference, validation)."""
        return decode_latents(self.vae, latents)

    def pipeline(self):
        """A `StableDiffusionPipeline` over these very modules (no copies), DDIM scheduler."""
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """`vae.decode(latents / scaling_factor)` mapped from [-1, 1] to [0, 1]; keeps the autograd graph."""
    images = vae.decode(latents / vae.config.scaling_factor).sample
    return ((images + 1) / 2).clamp(0, 1)


def load_backbone(
    model: str = "tiny", clip_skip: int | None = None, prediction_type: str | None = None
) -> Backbone:
    """Load SD1.x/2.x from a hub id or a local diffusers folder, or build `tiny` (seeded, offline).

    `prediction_type` overrides the scheduler's (e.g. a tiny v-prediction model for tests).
    """
    if model == "tiny":
        from renegx.tiny import tiny_sd_components

        components = tiny_sd_components(prediction_type=prediction_type or "epsilon")
    else:
        components = _load_components(model)
        if prediction_type is not None:
            components["scheduler"].register_to_config(prediction_type=prediction_type)
    return Backbone(components, name=model, clip_skip=clip_skip)
