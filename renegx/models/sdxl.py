"""SDXL as a frozen backbone: two CLIP encoders, a pooled text embedding and size conditioning.

SDXL's negative is `negative_prompt_embeds` `(1, 77, 2048)` *and* `negative_pooled_prompt_embeds`
`(1, 1280)`, and both are learned. The backbone hands them around as one *packed* conditioning
`(B, 78, 2048)`: the 77 token rows, then the pooled vector zero-padded to 2048 as a 78th row.
`PackedSDXLUNet` unpacks it before every UNet call (adding `add_time_ids`), so the guidance math and the
training module treat SDXL like SD1.x: one tensor per conditioning, one learned parameter, whose pooled row
gets its gradient through the UNet's `text_embeds`. The padding of that row never reaches the UNet, so it
gets no gradient and stays zero.

Conventions (diffusers' `StableDiffusionXLPipeline`): token rows are CLIP-L and CLIP-G `hidden_states[-2]`
concatenated (no final norm); pooled is CLIP-G's projected `text_embeds`; the empty prompt is zeros for both
(`force_zeros_for_empty_prompt`), which is therefore the baseline null; `add_time_ids` are
`(H, W, 0, 0, H, W)` for an image generated at its native size.
"""

from __future__ import annotations

import torch
from torch import nn

from renegx.models.backbone import Backbone, vae_scale_factor
from renegx.models.loading import ModelError, from_pretrained
from renegx.models.registry import Family, NegativeShape, register
from renegx.models.sd import with_prediction_type
from renegx.models.single_file import is_single_file, load_single_file

SDXL_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


def pack_conditioning(embeds: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """`(B, L, D)` token embeddings and `(B, P)` pooled (P <= D) as one `(B, L + 1, D)` tensor (with grad)."""
    width, pooled_size = embeds.shape[-1], pooled.shape[-1]
    if pooled_size > width:
        raise ModelError(f"pooled size {pooled_size} is larger than the embedding width {width}")
    row = torch.nn.functional.pad(pooled, (0, width - pooled_size)).unsqueeze(1)
    return torch.cat([embeds, row.to(embeds.dtype)], dim=1)


def unpack_conditioning(packed: torch.Tensor, pooled_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `pack_conditioning`: `(B, L, D)` token embeddings and `(B, pooled_size)` pooled."""
    return packed[:, :-1], packed[:, -1, :pooled_size]


def sdxl_time_ids(height: int, width: int, batch: int, dtype: torch.dtype, device) -> torch.Tensor:
    """`add_time_ids` `(batch, 6)`: original size, crop top-left (0, 0), target size, as the pipeline sets."""
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype, device=device).repeat(batch, 1)


def packed_negative(backbone: Backbone, embeds: torch.Tensor, pooled: torch.Tensor | None) -> torch.Tensor:
    """A file's rows `(N, L, D)` and pooled `(N, P)` packed as `backbone` conditions on them; one line when
    the pooled part is missing or of another size."""
    if pooled is None or pooled.shape[-1] != backbone.pooled_size:
        found = "none" if pooled is None else f"size {pooled.shape[-1]}"
        size = backbone.pooled_size
        raise ModelError(f"'{backbone.name}' needs a pooled embedding of size {size}, got {found}")
    return pack_conditioning(embeds, pooled)


class PackedDenoiser(nn.Module):
    """A denoiser behind SD's UNet call `network(latents, t, encoder_hidden_states=packed)`, where `packed`
    `(B, L + 1, D)` carries the pooled vector as its last row (`pack_conditioning`); subclasses unpack it for
    their network's own call. Training, the guidance math and the speed switches see one UNet-like module."""

    def __init__(self, network: nn.Module, pooled_size: int):
        super().__init__()
        self.network = network
        self.pooled_size = pooled_size

    @property
    def config(self):
        return self.network.config

    @property
    def dtype(self) -> torch.dtype:
        return self.network.dtype

    @property
    def device(self) -> torch.device:
        return self.network.device

    def set_attn_processor(self, processor) -> None:
        self.network.set_attn_processor(processor)

    def enable_gradient_checkpointing(self) -> None:
        self.network.enable_gradient_checkpointing()


class PackedSDXLUNet(PackedDenoiser):
    """The SDXL UNet behind SD's call signature, adding `add_time_ids`.

    `add_time_ids` are built once per size, dtype and device and then reused: a tensor built from host values
    at every call would be a host-to-device copy per UNet call.
    """

    def __init__(self, unet: nn.Module, pooled_size: int, pixels_per_latent: int):
        super().__init__(unet, pooled_size)
        self.pixels_per_latent = pixels_per_latent
        self._time_ids: dict[tuple, torch.Tensor] = {}

    @property
    def unet(self) -> nn.Module:
        return self.network

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor):
        embeds, pooled = unpack_conditioning(encoder_hidden_states, self.pooled_size)
        height, width = (side * self.pixels_per_latent for side in sample.shape[-2:])
        key = (height, width, embeds.dtype, sample.device)
        if key not in self._time_ids:
            self._time_ids[key] = sdxl_time_ids(height, width, 1, embeds.dtype, sample.device)
        time_ids = self._time_ids[key].expand(sample.shape[0], -1)
        added = {"text_embeds": pooled, "time_ids": time_ids}
        return self.unet(sample, timestep, encoder_hidden_states=embeds, added_cond_kwargs=added)


class SDXLBackbone(Backbone):
    """Frozen SDXL components; `encode_prompts` returns packed `(B, 78, D1 + D2)` conditionings."""

    def __init__(
        self,
        components: dict,
        name: str,
        clip_skip: int | None = None,
        force_zeros_for_empty_prompt: bool = True,
    ):
        pooled_size = components["text_encoder_2"].config.projection_dim
        unet = PackedSDXLUNet(components["unet"], pooled_size, vae_scale_factor(components["vae"]))
        super().__init__({**components, "unet": unet}, name=name, clip_skip=clip_skip)
        self.text_encoder_2 = components["text_encoder_2"].requires_grad_(False).eval()
        self.tokenizer_2 = components["tokenizer_2"]
        self.pooled_size = pooled_size
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt

    @property
    def hidden_size(self) -> int:
        """D of the token rows: CLIP-L's width plus CLIP-G's (2048 for SDXL)."""
        return self.text_encoder.config.hidden_size + self.text_encoder_2.config.hidden_size

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        embeds, _, pooled, _ = self.pipeline().encode_prompt(
            prompt=prompts,
            device=self.text_encoder.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            clip_skip=self.clip_skip,
        )
        return pack_conditioning(embeds, pooled)

    def null_embedding(self) -> torch.Tensor:
        """The unconditional input, packed `(1, 78, D)`: zeros (`force_zeros_for_empty_prompt`) or E("")."""
        empty = self.encode_prompts([""]).clone()
        return torch.zeros_like(empty) if self.force_zeros_for_empty_prompt else empty

    def negative_parts(self, negative: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A packed negative as the pipeline's `(negative_prompt_embeds, negative_pooled_prompt_embeds)`."""
        return unpack_conditioning(negative, self.pooled_size)

    def negative_conditioning(self, embeds: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        return packed_negative(self, embeds, pooled)

    @property
    def text_encoders(self) -> list[nn.Module]:
        return [self.text_encoder, self.text_encoder_2]

    def text_encoder_metadata(self) -> dict[str, str]:
        return {
            **super().text_encoder_metadata(),
            "text_encoder_hidden_size": str(self.hidden_size),
            "pooled_size": str(self.pooled_size),
            "force_zeros_for_empty_prompt": str(self.force_zeros_for_empty_prompt).lower(),
            "pipeline": "StableDiffusionXLPipeline",
        }

    def pipeline(self):
        """A `StableDiffusionXLPipeline` over these very modules (no copies), DDIM scheduler."""
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            text_encoder_2=self.text_encoder_2,
            tokenizer=self.tokenizer,
            tokenizer_2=self.tokenizer_2,
            unet=self.unet.unet,
            scheduler=self.scheduler,
            force_zeros_for_empty_prompt=self.force_zeros_for_empty_prompt,
            add_watermarker=False,
        )


class SDXLFamily(Family):
    """SDXL from a local diffusers folder, a hub id or a single file."""

    name = "sdxl"
    trains = True
    pipeline, pipeline_tag = "StableDiffusionXLPipeline", "StableDiffusionXL"
    negative = NegativeShape(pooled=True)
    null = "zeros"  # force_zeros_for_empty_prompt, SDXL's default; a model that turns it off has E("")

    def components(self, model: str) -> tuple[dict, bool]:
        """The components of `model` and its `force_zeros_for_empty_prompt`."""
        from diffusers import StableDiffusionXLPipeline

        return self.components_of(from_pretrained(StableDiffusionXLPipeline, model, what="SDXL model"))

    def components_of(self, pipe) -> tuple[dict, bool]:
        """A `StableDiffusionXLPipeline`'s components and its `force_zeros_for_empty_prompt`."""
        components = {name: getattr(pipe, name) for name in SDXL_COMPONENTS}
        return components, bool(pipe.config.force_zeros_for_empty_prompt)

    def backbone(self, components: tuple[dict, bool], name: str, clip_skip, prediction_type) -> SDXLBackbone:
        """An `SDXLBackbone`, its scheduler's prediction type overridden when asked."""
        modules, force_zeros_for_empty_prompt = components
        return SDXLBackbone(
            with_prediction_type(modules, prediction_type), name, clip_skip, force_zeros_for_empty_prompt
        )

    def load_pipeline(self, model: str, clip_skip: int | None = None, config: str | None = None):
        if is_single_file(model):
            return load_single_file(model, self.pipeline, config)
        return super().load_pipeline(model, clip_skip)


SDXL = register(SDXLFamily())
