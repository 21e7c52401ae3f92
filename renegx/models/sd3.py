"""SD3 / SD3.5: rectified flow over CLIP-L, CLIP-G and T5, as a frozen training backbone and for the samplers.

SD3's negative is `negative_prompt_embeds` `(1, 77 + 256, 4096)` — CLIP-L ‖ CLIP-G penultimate states
zero-padded to T5's width, then T5's states at `max_sequence_length` 256 — *and*
`negative_pooled_prompt_embeds` `(1, 2048)` (CLIP-L's and CLIP-G's projections); both are learned. As SDXL's
(`renegx.models.sdxl`), the backbone hands them around packed as one `(B, 334, 4096)` conditioning whose
last row is the pooled vector zero-padded; `PackedSD3Transformer` unpacks it before every transformer call,
so the training step is SD's: a guided Euler rollout (`FlowSchedule`), one step with the gradient through the
negative branch, `x̂0 = x_t − σ v̂`, the VAE decode (with its shift factor), the reward.

Conventions (diffusers' `StableDiffusion3Pipeline`): prompts are encoded by the pipeline's own
`encode_prompt`; the CFG null is `E("")` (the pipeline's default negative), which is the learned negative's
start; the transformer takes the timestep `1000 σ` per sample; a model loaded without T5 has zero T5 rows.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from renegx.models.backbone import FROZEN_DTYPES, Backbone
from renegx.models.loading import ModelError, from_pretrained
from renegx.models.registry import Family, NegativeShape, register
from renegx.models.sdxl import PackedDenoiser, pack_conditioning, packed_negative, unpack_conditioning
from renegx.schedules import FlowSchedule, flow_schedule

SD3_COMPONENTS = (
    *("transformer", "vae", "scheduler"),
    *("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3"),
)
T5_ROWS = 256  # StableDiffusion3Pipeline's max_sequence_length


class PackedSD3Transformer(PackedDenoiser):
    """The SD3 transformer behind SD's call signature: the packed conditioning is split into token rows and
    the pooled projection, and the timestep is given to every sample of the batch."""

    def set_attn_processor(self, processor) -> None:
        raise ModelError("SD3's joint attention has no classic processor; use attention: sdpa")

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor):
        embeds, pooled = unpack_conditioning(encoder_hidden_states, self.pooled_size)
        return self.network(
            sample,
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            timestep=torch.as_tensor(timestep, device=sample.device).expand(sample.shape[0]),
        )


class SD3Backbone(Backbone):
    """Frozen SD3 components; `encode_prompts` returns packed `(B, 77 + 256 + 1, D)` conditionings.

    An SD3.5 conditioning is 334 × 4096 float32 numbers, 5.5 MB a prompt, so fewer prompts are cached.
    """

    prompt_cache_size = 128

    def __init__(self, components: dict, name: str, clip_skip: int | None = None, t5_rows: int = T5_ROWS):
        encoders = (components["text_encoder"], components["text_encoder_2"])
        pooled_size = sum(encoder.config.projection_dim for encoder in encoders)
        network = PackedSD3Transformer(components["transformer"], pooled_size)
        super().__init__({**components, "unet": network}, name=name, clip_skip=clip_skip)
        self.text_encoder_2 = components["text_encoder_2"].requires_grad_(False).eval()
        self.tokenizer_2 = components["tokenizer_2"]
        t5 = components["text_encoder_3"]
        self.text_encoder_3 = None if t5 is None else t5.requires_grad_(False).eval()
        self.tokenizer_3 = components["tokenizer_3"]
        self.pooled_size = pooled_size
        self.t5_rows = t5_rows

    @staticmethod
    def own_scheduler(scheduler):
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)

    def schedule(self, num_inference_steps: int) -> FlowSchedule:
        """Euler steps over the sigmas the pipeline sets for this image size (its shift, if dynamic)."""
        channels, height, width = self.latent_shape
        patch = self.unet.config.patch_size
        patches = (height // patch) * (width // patch)
        return flow_schedule(self.scheduler, num_inference_steps, patches)

    @property
    def hidden_size(self) -> int:
        """D: the transformer's joint attention width (T5's; the CLIP rows are zero-padded to it)."""
        return self.unet.config.joint_attention_dim

    @property
    def sequence_length(self) -> int:
        """CLIP's 77 rows, then the T5 rows."""
        return self.max_length + self.t5_rows

    @property
    def prediction_type(self) -> str:
        return "flow"  # the transformer predicts the velocity ε − x0

    @property
    def text_encoders(self) -> list[nn.Module]:
        encoders = [self.text_encoder, self.text_encoder_2, self.text_encoder_3]
        return [encoder for encoder in encoders if encoder is not None]

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        embeds, _, pooled, _ = self.pipeline().encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=self.text_encoder.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            clip_skip=self.clip_skip,
            max_sequence_length=self.t5_rows,
        )
        return pack_conditioning(embeds.float(), pooled.float())

    def negative_parts(self, negative: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A packed negative as the pipeline's `(negative_prompt_embeds, negative_pooled_prompt_embeds)`."""
        return unpack_conditioning(negative, self.pooled_size)

    def negative_conditioning(self, embeds: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        return packed_negative(self, embeds, pooled)

    def configure_performance(self, frozen_dtype: str = "float32", **switches) -> SD3Backbone:
        """`Backbone.configure_performance`, and the text encoders in `frozen_dtype` too: SD3.5's T5-XXL alone
        is 19 GB in float32. Their outputs are cached in float32."""
        super().configure_performance(frozen_dtype=frozen_dtype, **switches)
        for encoder in self.text_encoders:
            nn.Module.to(encoder, dtype=FROZEN_DTYPES[frozen_dtype])
        return self

    def text_encoder_metadata(self) -> dict[str, str]:
        return {
            **super().text_encoder_metadata(),
            "text_encoder_max_length": str(self.sequence_length),
            "pooled_size": str(self.pooled_size),
            "pipeline": "StableDiffusion3Pipeline",
            "scheduler": "FlowMatchEulerDiscreteScheduler",
        }

    def pipeline(self):
        """A `StableDiffusion3Pipeline` over these very modules (no copies), flow-matching Euler scheduler,
        encoding prompts with this backbone's T5 rows."""
        return sd3_pipeline_class(self.t5_rows)(
            transformer=self.unet.network,
            scheduler=self.scheduler,
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            text_encoder_2=self.text_encoder_2,
            tokenizer_2=self.tokenizer_2,
            text_encoder_3=self.text_encoder_3,
            tokenizer_3=self.tokenizer_3,
        )


@functools.cache
def sd3_pipeline_class(t5_rows: int = T5_ROWS):
    """`StableDiffusion3Pipeline`, drawing with `max_sequence_length=t5_rows` unless a call says otherwise
    (a model trained on fewer T5 rows than the pipeline's default 256 is drawn as it was trained)."""
    from diffusers import StableDiffusion3Pipeline

    if t5_rows == T5_ROWS:
        return StableDiffusion3Pipeline
    call = functools.partialmethod(StableDiffusion3Pipeline.__call__, max_sequence_length=t5_rows)
    return type(StableDiffusion3Pipeline.__name__, (StableDiffusion3Pipeline,), {"__call__": call})


class SD3Family(Family):
    """SD3 and SD3.5 (medium, large) from a local diffusers folder or a hub id."""

    name = "sd3"
    trains = True
    pipeline, pipeline_tag = "StableDiffusion3Pipeline", "StableDiffusion3"
    scheduler = "flow"
    negative = NegativeShape(pooled=True)
    t5_rows = T5_ROWS  # the pipeline's `max_sequence_length`

    def components(self, model: str) -> dict:
        from diffusers import StableDiffusion3Pipeline

        return self.components_of(from_pretrained(StableDiffusion3Pipeline, model, what="SD3 model"))

    def components_of(self, pipe) -> dict:
        return {name: getattr(pipe, name) for name in SD3_COMPONENTS}

    def backbone(self, components: dict, name: str, clip_skip, prediction_type) -> SD3Backbone:
        """An `SD3Backbone`; a flow model has one prediction type, so any other is refused."""
        if prediction_type not in (None, "flow"):
            raise ModelError(
                f"'{name}' is a flow-matching model; prediction_type '{prediction_type}' does not apply"
            )
        return SD3Backbone(components, name, clip_skip, self.t5_rows)


SD3 = register(SD3Family())
