"""The diffusion model as the samplers see it: one adapter per diffusers pipeline class.

Every adapter offers the same small contract:
- `encode(texts) -> Cond` and `null() -> Cond` (SD1.x/2.x, SD3 and FLUX: `E("")`; SDXL: zeros, as diffusers
  does);
- `schedule(num_steps, latent_size) -> DDIMSchedule | FlowSchedule`: the closed-form, stateless schedules
  of `renegx.schedules` that training steps over too (`step(output, index, sample) -> (next_sample, x̂0)`,
  `x0`, `eps`), so side chains may step as often as they like;
- `denoise(latents, schedule, index, conds) -> outputs`: one counted forward per group of conditionings of
  equal sequence length (a prompt and a longer concatenated negative run as split forwards);
- `initial_latents(generator, height, width)`, `decode(latents) -> (B, 3, H, W) in [0, 1]`;
- `nfe`: the network evaluations so far (batch items), from an `NFECounter` around the denoiser;
- `spec`: the model's `renegx.models.Family` (scheduler kind, negative shape, the "auto" external models).

Adapters: `SDModel` (SD1.x/2.x over a renegx `Backbone`, ε or v prediction, DDIM), `SDXLModel` (two CLIP
encoders, pooled embeddings and size conditioning, DDIM), `SD3Model` (rectified flow, `FlowSchedule`),
`FluxModel` (rectified flow over packed latents, true CFG beside the distilled guidance embedding).
Which one a model gets is its family's `pipeline`; a family with a new pipeline class adds its adapter to
`ADAPTERS`.
"""

from __future__ import annotations

import numpy as np
import torch

from renegx.models import Family, family_of, family_of_pipeline
from renegx.models.backbone import Backbone, count_tokens, vae_scale_factor
from renegx.samplers.composer import Cond, Negative, SamplerError
from renegx.samplers.nfe import NFECounter
from renegx.schedules import DDIMSchedule, FlowSchedule, ddim_schedule, flow_schedule


class SamplingModel:
    """Shared machinery of the adapters; subclasses define encoding, the forward and the schedule.

    `family` labels the architecture in messages; `pipeline` is the diffusers class the adapter runs.
    """

    family = "base"
    pipeline = ""

    def __init__(self, network: torch.nn.Module, vae, name: str, spec: Family):
        self.network = NFECounter(network)
        self.vae = vae
        self.name = name
        self.spec = spec
        self._cache: dict[str, Cond] = {}

    # --- what subclasses provide -------------------------------------------------------------------------
    def _encode(self, texts: list[str]) -> Cond:
        raise NotImplementedError

    def _forward(self, latents, timestep, cond: Cond) -> torch.Tensor:
        raise NotImplementedError

    def schedule(self, num_steps: int, latent_size: tuple[int, int] | None = None):
        raise NotImplementedError

    tokenizer = None
    hidden_size: int = 0
    latent_channels: int = 4
    default_size: int = 64

    # --- shared -------------------------------------------------------------------------------------------
    @property
    def nfe(self) -> int:
        return self.network.nfe

    @property
    def device(self) -> torch.device:
        return next(self.network.network.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.network.network.parameters()).dtype

    def modules(self) -> list[torch.nn.Module]:
        """Every module the adapter runs (moved together by `to`)."""
        raise NotImplementedError

    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        """The pipeline's text encoders in its order (what a negative's fingerprint is of)."""
        names = ("text_encoder", "text_encoder_2", "text_encoder_3")
        return [encoder for name in names if (encoder := getattr(self.pipe, name, None)) is not None]

    def to(self, device=None, dtype: torch.dtype | None = None) -> SamplingModel:
        """Move (and cast) every module; latents stay float32 and are cast at the network's boundary."""
        for module in self.modules():
            if module is not None:
                torch.nn.Module.to(module, device=device, dtype=dtype)
        self._cache.clear()
        return self

    @property
    def vae_scale_factor(self) -> int:
        return vae_scale_factor(self.vae)

    @property
    def max_length(self) -> int:
        """Tokens one CLIP encoding holds (77, BOS and EOS included)."""
        return self.tokenizer.model_max_length

    @property
    def sequence_length(self) -> int:
        """L of a conditioning, which a negative file must share (SD1.x/2.x and SDXL: the CLIP length)."""
        return self.max_length

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` in the (first) CLIP tokenizer, BOS and EOS included, without truncation."""
        return count_tokens(self.tokenizer, text)

    def encode(self, texts: list[str]) -> Cond:
        """`(len(texts), L, D)` conditionings; each distinct text is encoded once per model."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            encoded = self._encode(missing)
            for row, text in enumerate(missing):
                pooled = None if encoded.pooled is None else encoded.pooled[row : row + 1]
                self._cache[text] = Cond(encoded.embeds[row : row + 1], pooled)
        conds = [self._cache[t] for t in texts]
        pooled = None if conds[0].pooled is None else torch.cat([c.pooled for c in conds])
        return Cond(torch.cat([c.embeds for c in conds]), pooled)

    def null(self) -> Cond:
        return self.encode([""])

    def initial_latents(
        self, generator: torch.Generator, height: int | None = None, width: int | None = None
    ) -> torch.Tensor:
        """`(1, C, H/f, W/f)` Gaussian latents drawn exactly as diffusers' `prepare_latents` draws them."""
        from diffusers.utils.torch_utils import randn_tensor

        height, width = height or self.default_size, width or self.default_size
        factor = self.vae_scale_factor
        if height % factor or width % factor:
            raise SamplerError(f"height and width must be multiples of {factor}, got {height}x{width}")
        shape = (1, self.latent_channels, height // factor, width // factor)
        return randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)

    def denoise(self, latents: torch.Tensor, schedule, index: int, conds: list[Cond]) -> list[torch.Tensor]:
        """Network outputs for `latents` under each conditioning, in order; equal lengths share a forward.

        Inputs are cast to the network's dtype and outputs back to the latents' dtype.
        """
        timestep = schedule.timesteps[index]
        batch, dtype = latents.shape[0], self.dtype
        groups: dict[tuple, list[int]] = {}
        for position, cond in enumerate(conds):
            groups.setdefault((cond.seq_len, cond.pooled is None), []).append(position)
        outputs: list[torch.Tensor | None] = [None] * len(conds)
        with torch.no_grad():
            for members in groups.values():
                rows = [conds[m].rows(batch) for m in members]
                embeds = torch.cat([r.embeds for r in rows]).to(latents.device, dtype)
                pooled = None
                if rows[0].pooled is not None:
                    pooled = torch.cat([r.pooled for r in rows]).to(latents.device, dtype)
                model_input = torch.cat([latents] * len(members)) if len(members) > 1 else latents
                out = self._forward(model_input.to(dtype), timestep, Cond(embeds, pooled)).to(latents.dtype)
                for member, chunk in zip(members, out.chunk(len(members)), strict=True):
                    outputs[member] = chunk
        return outputs

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → images `(B, 3, H, W)` in [0, 1]."""
        config = self.vae.config
        scaled = latents / config.scaling_factor + (getattr(config, "shift_factor", None) or 0.0)
        images = self.vae.decode(scaled.to(self.vae.dtype)).sample
        return ((images.float() + 1) / 2).clamp(0, 1)

    def negative(self, embeds: torch.Tensor, label: str, pooled: torch.Tensor | None = None) -> Negative:
        """A learned embedding or a bank row `(1, L, D)` as a `Negative`, checked against this model."""
        if embeds.ndim != 3 or embeds.shape[0] != 1:
            raise SamplerError(
                f"a base negative must be one row of shape (1, L, D), got shape {tuple(embeds.shape)}; "
                "pick a bank's row for the prompt first"
            )
        if embeds.shape[2] != self.hidden_size:
            raise SamplerError(
                f"negative embedding hidden size {embeds.shape[2]} does not match the {self.family} "
                f"model's {self.hidden_size}"
            )
        if self.spec.negative.pooled and pooled is None:
            raise SamplerError(f"a {self.family} base negative needs pooled embeddings of shape (1, P)")
        return Negative(
            Cond(embeds.to(self.device), None if pooled is None else pooled.to(self.device)), label
        )

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """`(N, D)` mean-pooled text-encoder states over the real tokens (a text-space score's features)."""
        encoder, tokenizer, length = self._feature_encoder()
        tokens = tokenizer(
            texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        ).to(encoder.device)
        with torch.no_grad():
            output = encoder(tokens.input_ids, attention_mask=tokens.attention_mask)
            hidden = output.last_hidden_state.float()  # not [0]: CLIP-with-projection's first is the pooled
        mask = tokens.attention_mask.unsqueeze(-1).to(hidden)
        return (hidden * mask).sum(1) / mask.sum(1)

    def _feature_encoder(self) -> tuple[torch.nn.Module, object, int]:
        """`(encoder, its tokenizer, padded length)` that `text_features` reads: the (first) CLIP encoder,
        FLUX's T5."""
        raise NotImplementedError

    # --- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_pipe(cls, pipe, name: str, spec: Family) -> SamplingModel:
        """The adapter over a loaded diffusers pipeline of this adapter's class."""
        return cls(pipe, name, spec)

    @classmethod
    def load(
        cls, spec: Family, model: str, clip_skip: int | None = None, backbone=None, config: str | None = None
    ) -> SamplingModel:
        """The adapter over `model` (a single file read with `config`), loaded by its family `spec`."""
        return cls(spec.load_pipeline(model, clip_skip=clip_skip, config=config), model, spec)


class SDModel(SamplingModel):
    """SD1.x/2.x over a renegx `Backbone` (cached prompt encoding, clip_skip, ε or v, DDIM)."""

    family = "sd"
    pipeline = "StableDiffusionPipeline"

    def __init__(self, backbone: Backbone, spec: Family | None = None):
        super().__init__(backbone.unet, backbone.vae, backbone.name, spec or family_of(backbone.name))
        self.backbone = backbone
        self.tokenizer = backbone.tokenizer
        self.hidden_size = backbone.hidden_size
        self.latent_channels = backbone.unet.config.in_channels
        self.default_size = backbone.unet.config.sample_size * self.vae_scale_factor

    def modules(self) -> list[torch.nn.Module]:
        return [self.backbone]

    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        return self.backbone.text_encoders

    def _encode(self, texts: list[str]) -> Cond:
        return Cond(self.backbone.encode_prompts(texts))

    def _forward(self, latents, timestep, cond: Cond) -> torch.Tensor:
        return self.network(latents, timestep, encoder_hidden_states=cond.embeds).sample

    def schedule(self, num_steps: int, latent_size: tuple[int, int] | None = None) -> DDIMSchedule:
        return ddim_schedule(self.backbone.scheduler, num_steps)

    def _feature_encoder(self):
        return self.backbone.text_encoder, self.tokenizer, self.max_length

    @classmethod
    def from_pipe(cls, pipe, name: str, spec: Family) -> SDModel:
        if not (hasattr(pipe, "unet") and hasattr(pipe, "text_encoder")):
            kind = type(pipe).__name__
            raise SamplerError(f"no sampler adapter for {kind}; expected SD1.x/2.x, SDXL or SD3 components")
        names = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
        return cls(Backbone({k: getattr(pipe, k) for k in names}, name=name), spec)

    @classmethod
    def load(
        cls, spec: Family, model: str, clip_skip: int | None = None, backbone=None, config: str | None = None
    ) -> SDModel:
        return cls(backbone or spec.load_backbone(model, clip_skip=clip_skip, config=config), spec)


class SDXLModel(SamplingModel):
    """SDXL over a `StableDiffusionXLPipeline`'s modules: `(B, 77, D1+D2)` embeds, pooled `(B, P)`,
    size conditioning `(H, W, 0, 0, H, W)`; its null is zeros (`force_zeros_for_empty_prompt`), DDIM steps."""

    family = "sdxl"
    pipeline = "StableDiffusionXLPipeline"

    def __init__(self, pipe, name: str = "sdxl", spec: Family | None = None):
        super().__init__(pipe.unet, pipe.vae, name, spec or family_of_pipeline(self.pipeline))
        self.pipe = pipe
        self.tokenizer = pipe.tokenizer or pipe.tokenizer_2
        encoders = [e for e in (pipe.text_encoder, pipe.text_encoder_2) if e is not None]
        self.hidden_size = sum(e.config.hidden_size for e in encoders)
        self.latent_channels = pipe.unet.config.in_channels
        self.default_size = pipe.unet.config.sample_size * self.vae_scale_factor

    def modules(self) -> list[torch.nn.Module]:
        return [self.pipe.unet, self.pipe.vae, self.pipe.text_encoder, self.pipe.text_encoder_2]

    def _encode(self, texts: list[str]) -> Cond:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=texts, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return Cond(embeds, pooled)

    def null(self) -> Cond:
        if not self.pipe.config.force_zeros_for_empty_prompt:
            return self.encode([""])
        text = self.encode(["x"])
        return Cond(torch.zeros_like(text.embeds), torch.zeros_like(text.pooled))

    def _forward(self, latents, timestep, cond: Cond) -> torch.Tensor:
        height, width = (s * self.vae_scale_factor for s in latents.shape[-2:])
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=latents.dtype)
        added = {"text_embeds": cond.pooled, "time_ids": time_ids.to(latents.device).repeat(len(latents), 1)}
        return self.network(
            latents, timestep, encoder_hidden_states=cond.embeds, added_cond_kwargs=added
        ).sample

    def schedule(self, num_steps: int, latent_size: tuple[int, int] | None = None) -> DDIMSchedule:
        return ddim_schedule(self.pipe.scheduler, num_steps)

    def _feature_encoder(self):
        return self.pipe.text_encoder or self.pipe.text_encoder_2, self.tokenizer, self.max_length


class SD3Model(SamplingModel):
    """SD3-style rectified flow over a `StableDiffusion3Pipeline`'s modules (CLIP-L, CLIP-G, optional T5).

    Conditionings are `(B, 77 + max_sequence_length, joint_dim)` with a pooled `(B, P)`; the null is `E("")`.
    Steps are closed-form Euler over the sigmas of a fresh copy of the pipeline's scheduler.
    """

    family = "sd3"
    pipeline = "StableDiffusion3Pipeline"

    def __init__(
        self, pipe, name: str = "sd3", spec: Family | None = None, max_sequence_length: int | None = None
    ):
        super().__init__(pipe.transformer, pipe.vae, name, spec or family_of_pipeline(self.pipeline))
        self.pipe = pipe
        self.tokenizer = pipe.tokenizer
        self.hidden_size = pipe.transformer.config.joint_attention_dim
        self.latent_channels = pipe.transformer.config.in_channels
        self.default_size = pipe.transformer.config.sample_size * self.vae_scale_factor
        self.max_sequence_length = max_sequence_length or self.spec.t5_rows

    @property
    def sequence_length(self) -> int:
        """CLIP's 77 rows and the T5 rows (the family's `t5_rows`)."""
        return self.max_length + self.max_sequence_length

    def modules(self) -> list[torch.nn.Module]:
        pipe = self.pipe
        return [pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3]

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> Cond:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=texts,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return Cond(embeds, pooled)

    def _forward(self, latents, timestep, cond: Cond) -> torch.Tensor:
        return self.network(
            latents,
            encoder_hidden_states=cond.embeds,
            pooled_projections=cond.pooled,
            timestep=timestep.expand(latents.shape[0]),
            return_dict=False,
        )[0]

    def schedule(self, num_steps: int, latent_size: tuple[int, int] | None = None) -> FlowSchedule:
        size = latent_size or (self.default_size // self.vae_scale_factor,) * 2
        patch = self.pipe.transformer.config.patch_size
        patches = (size[0] // patch) * (size[1] // patch)
        return flow_schedule(self.pipe.scheduler, num_steps, patches, device=self.device)

    def _feature_encoder(self):
        return self.pipe.text_encoder, self.tokenizer, self.max_length


class FluxModel(SamplingModel):
    """FLUX.1 over a `FluxPipeline`'s modules, with true CFG as `FluxPipeline(true_cfg_scale=w)` draws it.

    Conditionings are T5 states `(B, max_sequence_length, joint_dim)` with CLIP-L's pooled output `(B, P)`;
    the null is `E("")` (`negative_prompt=""`). Latents stay `(B, C, h, w)` for the samplers and are packed
    into 2×2 patches around each transformer call, with the pipeline's image and text position ids; the
    timestep is σ (`t / 1000`) and a guidance-distilled model gets `guidance` (FluxPipeline's 3.5 by default)
    as its embedding at every call, the negative's included. Steps are closed-form Euler over FLUX's sigmas
    (`linspace(1, 1/T, T)`, shifted by the image's token count). NPC's text-space score reads the T5 states.
    """

    family = "flux"
    pipeline = "FluxPipeline"

    def __init__(
        self,
        pipe,
        name: str = "flux",
        spec: Family | None = None,
        max_sequence_length: int = 512,
        guidance: float = 3.5,
    ):
        super().__init__(pipe.transformer, pipe.vae, name, spec or family_of_pipeline(self.pipeline))
        self.pipe = pipe
        self.tokenizer = pipe.tokenizer
        self.hidden_size = pipe.transformer.config.joint_attention_dim
        self.latent_channels = pipe.transformer.config.in_channels // 4
        self.default_size = pipe.default_sample_size * pipe.vae_scale_factor
        self.max_sequence_length = max_sequence_length
        self.guidance = guidance if pipe.transformer.config.guidance_embeds else None

    @property
    def sequence_length(self) -> int:
        """The T5 rows (CLIP-L gives the pooled vector only)."""
        return self.max_sequence_length

    def modules(self) -> list[torch.nn.Module]:
        pipe = self.pipe
        return [pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2]

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> Cond:
        embeds, pooled, _ = self.pipe.encode_prompt(
            prompt=texts,
            prompt_2=None,
            device=self.device,
            num_images_per_prompt=1,
            max_sequence_length=self.max_sequence_length,
        )
        return Cond(embeds, pooled)

    def initial_latents(
        self, generator: torch.Generator, height: int | None = None, width: int | None = None
    ) -> torch.Tensor:
        """As `FluxPipeline.prepare_latents` draws them, before packing; sides must hold whole 2×2 patches."""
        side = 2 * self.vae_scale_factor
        height, width = height or self.default_size, width or self.default_size
        if height % side or width % side:
            raise SamplerError(f"FLUX needs height and width in multiples of {side}, got {height}x{width}")
        return super().initial_latents(generator, height, width)

    def _forward(self, latents, timestep, cond: Cond) -> torch.Tensor:
        pipe, (batch, channels, height, width) = self.pipe, latents.shape
        packed = pipe._pack_latents(latents, batch, channels, height, width)
        image_ids = pipe._prepare_latent_image_ids(
            batch, height // 2, width // 2, latents.device, latents.dtype
        )
        text_ids = torch.zeros(cond.seq_len, 3, device=latents.device, dtype=latents.dtype)
        guidance = None
        if self.guidance is not None:
            guidance = torch.full([1], self.guidance, device=latents.device, dtype=torch.float32).expand(
                batch
            )
        out = self.network(
            packed,
            timestep=timestep.expand(batch).to(latents.dtype) / 1000,
            guidance=guidance,
            pooled_projections=cond.pooled,
            encoder_hidden_states=cond.embeds,
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0]
        factor = self.vae_scale_factor
        return pipe._unpack_latents(out, height * factor, width * factor, factor)

    def schedule(self, num_steps: int, latent_size: tuple[int, int] | None = None) -> FlowSchedule:
        size = latent_size or (self.default_size // self.vae_scale_factor,) * 2
        sigmas = None
        if not self.pipe.scheduler.config.get("use_flow_sigmas", False):
            sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
        patches = (size[0] // 2) * (size[1] // 2)
        return flow_schedule(self.pipe.scheduler, num_steps, patches, device=self.device, sigmas=sigmas)

    def _feature_encoder(self):
        return self.pipe.text_encoder_2, self.pipe.tokenizer_2, self.max_sequence_length


ADAPTERS: dict[str, type[SamplingModel]] = {
    cls.pipeline: cls for cls in (SDModel, SDXLModel, SD3Model, FluxModel)
}


def _adapter(spec: Family) -> type[SamplingModel]:
    if spec.pipeline not in ADAPTERS:
        raise SamplerError(f"no sampler adapter for the {spec.name} family's {spec.pipeline}")
    return ADAPTERS[spec.pipeline]


def sampling_model(backbone_or_pipe, name: str | None = None) -> SamplingModel:
    """The adapter for a renegx `Backbone` or a diffusers SD / SDXL / SD3 / FLUX pipeline."""
    if isinstance(backbone_or_pipe, Backbone):
        return SDModel(backbone_or_pipe)
    kind = type(backbone_or_pipe).__name__
    spec = family_of_pipeline(kind)
    return _adapter(spec).from_pipe(backbone_or_pipe, name or kind, spec)


def load_sampling_model(
    model: str, clip_skip: int | None = None, backbone: Backbone | None = None, config: str | None = None
) -> SamplingModel:
    """A model of any family (`renegx.models`) by name, folder, hub id or single file (read with `config`),
    as a sampler adapter.

    An already loaded SD1.x/2.x `backbone` is reused as is.
    """
    spec = family_of(model, config)
    return _adapter(spec).load(spec, model, clip_skip, backbone, config)
