"""The frozen diffusion model (UNet, VAE, text encoder, tokenizer, DDIM scheduler) and cached prompt encoding.

A `Backbone` is built by a model family (`renegx.models.load_backbone(name)`) from components in the
SD1.x/2.x layout; SDXL's and SD3's subclass it (`sdxl.py`, `sd3.py`), behind the same UNet call and with
their own schedule. Nothing here is ever trained.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from renegx.errors import RenegxWarning
from renegx.models.loading import ModelError
from renegx.negatives.fingerprint import FINGERPRINT_KEY, text_encoder_fingerprint
from renegx.negatives.format import text_encoder_id
from renegx.schedules import DDIMSchedule, FlowSchedule, ddim_schedule

FROZEN_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
ATTENTION = ("sdpa", "classic")


class PromptTruncated(RenegxWarning):
    """A prompt longer than the text encoder reads."""


class Backbone(nn.Module):
    """Frozen SD1.x/2.x components with a per-prompt cache of text-encoder outputs.

    `encode_prompts` returns `(B, L, D)` text-encoder outputs exactly as diffusers' `encode_prompt`
    computes `prompt_embeds` (with `clip_skip`: hidden state `-(clip_skip + 1)` through the final layer norm).
    The cache keeps the `prompt_cache_size` most recently used prompts (on the text encoder's device: 1024
    SD1.5 prompts are 0.24 GB, SDXL's 0.65 GB); an evicted prompt is encoded again, to the same values.
    """

    prompt_cache_size = 1024

    def __init__(self, components: dict, name: str, clip_skip: int | None = None):
        super().__init__()
        if clip_skip is not None and clip_skip < 0:
            raise ModelError(f"clip_skip must be >= 0, got {clip_skip}")
        self.unet = components["unet"]
        self.vae = components["vae"]
        self.text_encoder = components["text_encoder"]
        self.tokenizer = components["tokenizer"]
        self.scheduler = self.own_scheduler(components["scheduler"])
        self.name = name
        self.clip_skip = clip_skip
        self.requires_grad_(False)
        self.eval()
        self._prompt_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._truncation_checked: set[str] = set()  # prompts `warn_if_truncated` has already looked at

    def train(self, mode: bool = True) -> Backbone:
        return super().train(False)

    @staticmethod
    def own_scheduler(scheduler):
        """The scheduler this backbone samples with, from a model's: DDIM (η = 0) over its config."""
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(scheduler.config)

    def schedule(self, num_inference_steps: int) -> DDIMSchedule | FlowSchedule:
        """The closed-form schedule of `num_inference_steps` training, validation and tuning step over."""
        return ddim_schedule(self.scheduler, num_inference_steps)

    @property
    def hidden_size(self) -> int:
        return self.text_encoder.config.hidden_size

    @property
    def max_length(self) -> int:
        return self.tokenizer.model_max_length

    @property
    def text_encoders(self) -> list[nn.Module]:
        """The text encoders, in the pipeline's order (what a negative's id and fingerprint are of)."""
        return [self.text_encoder]

    @property
    def sequence_length(self) -> int:
        """L of a conditioning, which a negative file must share (the CLIP length here)."""
        return self.max_length

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
        return self.encode_text(prompts)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """`(B, L, D)` conditionings of `prompts`, uncached, with the graph when grad is enabled (a textual
        inversion's vectors spliced into the token embeddings train through it)."""
        ids = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.text_encoder.device)
        if self.clip_skip is None:
            return self.text_encoder(ids)[0]
        out = self.text_encoder(ids, output_hidden_states=True)
        hidden = out.hidden_states[-(self.clip_skip + 1)]
        return self.text_encoder.text_model.final_layer_norm(hidden)

    def warn_if_truncated(self, prompts: list[str]) -> None:
        """One warning line per prompt (once per run) that the first text encoder cannot read whole: it reads
        `max_length` tokens and drops the rest."""
        for prompt in dict.fromkeys(prompts):
            if prompt in self._truncation_checked:
                continue
            self._truncation_checked.add(prompt)
            count = count_tokens(self.tokenizer, prompt)
            if count > self.max_length:
                words = prompt if len(prompt) <= 60 else prompt[:57] + "..."
                warnings.warn(
                    PromptTruncated(
                        f"prompt {words!r} is {count} tokens; the text encoder reads the first "
                        f"{self.max_length} and drops the rest"
                    ),
                    stacklevel=2,
                )

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """`(B, L, D)` embeddings; each distinct prompt goes through the text encoder once per run.

        Prompts are encoded one at a time: batched kernels round differently at other batch sizes, and a
        prompt's embedding must not depend on which prompts first shared its batch (exact resume, DDP).
        """
        cache = self._prompt_cache
        for prompt in dict.fromkeys(prompts):
            if prompt in cache:
                cache.move_to_end(prompt)
            else:
                self.warn_if_truncated([prompt])
                cache[prompt] = self._encode([prompt])[0]
        device = self.text_encoder.device
        embeds = torch.stack([cache[p].to(device) for p in prompts])
        while len(cache) > self.prompt_cache_size:
            cache.popitem(last=False)
        return embeds

    def null_embedding(self) -> torch.Tensor:
        """`E("")`, shape `(1, L, D)`: the CFG baseline and the init of a learned negative."""
        return self.encode_prompts([""]).clone()

    def negative_parts(self, negative: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A learned negative as the pipeline's `(negative_prompt_embeds, negative_pooled_prompt_embeds)`."""
        return negative, None

    def negative_conditioning(self, embeds: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """Inverse of `negative_parts`: a file's `(N, L, D)` rows (and pooled `(N, P)`) as the conditioning
        this backbone's UNet takes."""
        if pooled is not None:
            shape = tuple(pooled.shape)
            raise ModelError(f"'{self.name}' takes no pooled embedding, got one of shape {shape}")
        return embeds

    def text_encoder_metadata(self) -> dict[str, str]:
        fingerprint = text_encoder_fingerprint(self.text_encoders)
        return {
            "text_encoder": "+".join(type(encoder).__name__ for encoder in self.text_encoders),
            "text_encoder_id": text_encoder_id(self.text_encoders),
            **({FINGERPRINT_KEY: fingerprint} if fingerprint else {}),
            "text_encoder_hidden_size": str(self.hidden_size),
            "text_encoder_max_length": str(self.max_length),
            "clip_skip": "none" if self.clip_skip is None else str(self.clip_skip),
            "prediction_type": self.prediction_type,
        }

    def configure_performance(
        self,
        frozen_dtype: str = "float32",
        attention: str = "sdpa",
        channels_last: bool = False,
        gradient_checkpointing: bool = False,
        compile: bool = False,
    ) -> Backbone:
        """Speed and memory switches on the UNet and VAE (in place); call before the first forward.

        frozen_dtype: `float32` or `bfloat16` for the UNet and VAE weights; their inputs are cast at the
            boundary and their outputs come back in the caller's dtype (`guidance`, `decode_latents`).
            The text encoder stays float32: its outputs are computed once per prompt and cached.
        attention: `sdpa` (torch's fused scaled-dot-product attention, diffusers' default) or `classic`
            (diffusers' `AttnProcessor`: softmax(QKᵀ)V materialised).
        channels_last: NHWC memory format for the convolutions.
        gradient_checkpointing: UNet and VAE-decoder blocks recompute their activations in backward instead
            of keeping them; only calls with grad enabled are affected (never the no-grad rollout).
        compile: `torch.compile` the UNet and the VAE decoder (the first calls of each shape compile).
        """
        from diffusers.models.attention_processor import AttnProcessor

        if frozen_dtype not in FROZEN_DTYPES:
            raise ModelError(f"unknown frozen_dtype '{frozen_dtype}'; known: {', '.join(FROZEN_DTYPES)}")
        if attention not in ATTENTION:
            raise ModelError(f"unknown attention '{attention}'; known: {', '.join(ATTENTION)}")
        dtype = FROZEN_DTYPES[frozen_dtype]
        for model in (self.unet, self.vae):
            if model.dtype != dtype:
                nn.Module.to(model, dtype=dtype)  # diffusers' `to` warns of fp32 modules SD has none of
            if attention == "classic":
                model.set_attn_processor(AttnProcessor())
            if channels_last:
                model.to(memory_format=torch.channels_last)
            if gradient_checkpointing:
                model.enable_gradient_checkpointing()
        if compile:
            self.unet.compile()
            self.vae.decoder.compile()
        return self

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


def decode_latents(vae, latents: torch.Tensor, max_size: int | None = None) -> torch.Tensor:
    """`vae.decode(latents / scaling_factor + shift_factor)` (the shift where the VAE has one: SD3, FLUX)
    mapped from [-1, 1] to [0, 1] in float32; keeps the graph.

    `max_size`: decode at most this many pixels on the shortest side, by shrinking the latents first
    (bilinear, antialiased) — a cheaper approximation of decoding in full and then shrinking the image.
    """
    if max_size is not None:
        latents = shrink_latents(latents, max_size // vae_scale_factor(vae))
    latents = latents / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        latents = latents + shift
    images = vae.decode(latents.to(vae.dtype)).sample.float()
    return ((images + 1) / 2).clamp(0, 1)


def count_tokens(tokenizer, text: str) -> int:
    """Tokens of `text` in a CLIP tokenizer, BOS and EOS included, without truncation (the tokenizer's own
    over-length notice is off: renegx says so itself, `PromptTruncated`)."""
    return len(tokenizer(text, truncation=False, verbose=False).input_ids)


def vae_scale_factor(vae) -> int:
    """Pixels per latent along a side (8 for SD)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def shrink_latents(latents: torch.Tensor, shortest_side: int) -> torch.Tensor:
    """Latents `(B, C, h, w)` shrunk so that `min(h, w) <= shortest_side`, keeping the aspect ratio."""
    height, width = latents.shape[-2:]
    if min(height, width) <= shortest_side:
        return latents
    scale = shortest_side / min(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return F.interpolate(latents, size=size, mode="bilinear", antialias=True, align_corners=False)
