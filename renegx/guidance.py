"""Pure math of guided DDIM sampling and of ReNeg's one-step training prediction.

Everything follows diffusers' `DDIMScheduler` contract (η = 0) but is closed-form and stateless, so the
same step can be taken inside a graph, in a side chain, or many times without touching a scheduler.
Shapes: latents `(B, C, h, w)`; text embeddings `(B | 1, L, D)`; a negative of batch 1 is broadcast.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import torch

from renegx.errors import RenegxError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class GuidanceError(RenegxError):
    pass


@dataclass(frozen=True)
class DDIMSchedule:
    """The numbers a deterministic DDIM run needs: its timesteps and the cumulative alphas.

    The tensors live where the UNet runs (`to`), so that no step copies a timestep from the host; the
    timesteps are also kept as Python ints (`timestep`), so that no step reads one back from the device.
    """

    timesteps: torch.Tensor  # (T,) long, descending
    alphas_cumprod: torch.Tensor  # (num_train_timesteps,)
    final_alpha_cumprod: torch.Tensor  # scalar: ᾱ used after the last step
    step_ratio: int  # num_train_timesteps // T
    prediction_type: str
    clip_sample_range: float | None  # clamp of x̂0, as the scheduler's `clip_sample`
    timestep_values: tuple[int, ...]  # `timesteps` on the host

    def __len__(self) -> int:
        return len(self.timestep_values)

    def timestep(self, index: int) -> int:
        return self.timestep_values[index]

    def alpha(self, timestep: int) -> torch.Tensor:
        return self.alphas_cumprod[timestep] if timestep >= 0 else self.final_alpha_cumprod

    @property
    def device(self) -> torch.device:
        return self.timesteps.device

    def to(self, device: torch.device | str) -> DDIMSchedule:
        """The same schedule with its tensors on `device`."""
        return replace(
            self,
            timesteps=self.timesteps.to(device),
            alphas_cumprod=self.alphas_cumprod.to(device),
            final_alpha_cumprod=self.final_alpha_cumprod.to(device),
        )


def ddim_schedule(scheduler, num_inference_steps: int) -> DDIMSchedule:
    """Read a DDIM schedule off any diffusers scheduler config (via a fresh `DDIMScheduler`)."""
    from diffusers import DDIMScheduler

    if num_inference_steps < 1:
        raise GuidanceError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    ddim = DDIMScheduler.from_config(scheduler.config)
    if ddim.config.thresholding:
        raise GuidanceError("dynamic thresholding is not supported; set thresholding=False in the scheduler")
    if ddim.config.prediction_type not in PREDICTION_TYPES:
        raise GuidanceError(
            f"unknown prediction_type '{ddim.config.prediction_type}'; known: {', '.join(PREDICTION_TYPES)}"
        )
    ddim.set_timesteps(num_inference_steps)
    return DDIMSchedule(
        timesteps=ddim.timesteps.clone(),
        alphas_cumprod=ddim.alphas_cumprod.clone(),
        final_alpha_cumprod=torch.as_tensor(ddim.final_alpha_cumprod),
        step_ratio=ddim.config.num_train_timesteps // num_inference_steps,
        prediction_type=ddim.config.prediction_type,
        clip_sample_range=ddim.config.clip_sample_range if ddim.config.clip_sample else None,
        timestep_values=tuple(ddim.timesteps.tolist()),
    )


def cfg(negative_output: torch.Tensor, positive_output: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance: `out_n + w (out_c − out_n)`, on ε, v or x̂0 alike."""
    return negative_output + guidance_scale * (positive_output - negative_output)


def predict_x0(model_output, sample, alpha_prod_t, prediction_type: str) -> torch.Tensor:
    """x̂0 from a model output at ᾱ_t: ε: `(x − √(1−ᾱ) ε)/√ᾱ`; v: `√ᾱ x − √(1−ᾱ) v`; sample: the output."""
    if prediction_type == "epsilon":
        return (sample - (1 - alpha_prod_t) ** 0.5 * model_output) / alpha_prod_t**0.5
    if prediction_type == "v_prediction":
        return alpha_prod_t**0.5 * sample - (1 - alpha_prod_t) ** 0.5 * model_output
    if prediction_type == "sample":
        return model_output
    raise GuidanceError(f"unknown prediction_type '{prediction_type}'; known: {', '.join(PREDICTION_TYPES)}")


def predict_eps(model_output, sample, alpha_prod_t, prediction_type: str) -> torch.Tensor:
    """ε̂ from a model output at ᾱ_t (the direction a DDIM step keeps)."""
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":
        return alpha_prod_t**0.5 * model_output + (1 - alpha_prod_t) ** 0.5 * sample
    if prediction_type == "sample":
        return (sample - alpha_prod_t**0.5 * model_output) / (1 - alpha_prod_t) ** 0.5
    raise GuidanceError(f"unknown prediction_type '{prediction_type}'; known: {', '.join(PREDICTION_TYPES)}")


def clamp_x0(schedule: DDIMSchedule, x0: torch.Tensor) -> torch.Tensor:
    """x̂0 clamped to the scheduler's `clip_sample_range` when it asks for `clip_sample`."""
    if schedule.clip_sample_range is None:
        return x0
    return x0.clamp(-schedule.clip_sample_range, schedule.clip_sample_range)


def ddim_step(
    schedule: DDIMSchedule,
    model_output: torch.Tensor,
    index: int,
    sample: torch.Tensor,
    to_index: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One η = 0 DDIM step from `timesteps[index]` to `timesteps[to_index]` (default the next one; the end of
    the schedule is `len(schedule)`); returns `(prev_sample, x̂0)`. A jump over several indices is the DDIM
    update between two timesteps of a coarser schedule."""
    to_index = index + 1 if to_index is None else to_index
    timestep = schedule.timestep(index)
    alpha_t = schedule.alpha(timestep)
    # diffusers' next timestep is always `t − step_ratio`; a jump lands on the target index's own timestep
    if to_index == index + 1:
        alpha_prev = schedule.alpha(timestep - schedule.step_ratio)
    elif to_index < len(schedule):
        alpha_prev = schedule.alpha(schedule.timestep(to_index))
    else:
        alpha_prev = schedule.alpha(schedule.timestep(len(schedule) - 1) - schedule.step_ratio)
    x0 = clamp_x0(schedule, predict_x0(model_output, sample, alpha_t, schedule.prediction_type))
    eps = predict_eps(model_output, sample, alpha_t, schedule.prediction_type)
    prev = alpha_prev**0.5 * x0 + (1 - alpha_prev) ** 0.5 * eps
    return prev, x0


def rollout_path(start_index: int, stop_index: int, stride: int = 1) -> list[int]:
    """The schedule indices a rollout visits from `start_index` to `stop_index`: every one for `stride` 1,
    else about one in `stride`, evenly spaced, always ending on `stop_index` (a coarser DDIM to the same x_t
    timestep)."""
    if stride < 1:
        raise GuidanceError(f"stride must be >= 1, got {stride}")
    span = stop_index - start_index
    if span <= 0:
        return [start_index]
    calls = -(-span // stride)
    return [start_index + round(span * k / calls) for k in range(calls + 1)]


def _unet(unet, latents, timestep, embeds) -> torch.Tensor:
    """The UNet's output in the latents' dtype; inputs are cast to the UNet's dtype (e.g. bf16 weights)."""
    dtype = getattr(unet, "dtype", latents.dtype)
    return unet(latents.to(dtype), timestep, encoder_hidden_states=embeds.to(dtype)).sample.to(latents.dtype)


def _batch(embeds: torch.Tensor, batch_size: int) -> torch.Tensor:
    return embeds.expand(batch_size, -1, -1) if embeds.shape[0] == 1 else embeds


@torch.no_grad()
def rollout_to(
    unet,
    schedule: DDIMSchedule,
    latents: torch.Tensor,
    negative_embeds: torch.Tensor,
    prompt_embeds: torch.Tensor,
    guidance_scale: float,
    stop_index: int,
    start_index: int = 0,
    stride: int = 1,
) -> torch.Tensor:
    """Guided DDIM from `latents` at `timesteps[start_index]` (x_T for 0) to x_t at `timesteps[stop_index]`.

    One UNet call per step on `cat([negative, prompt])`; no autograd graph is built.
    `stop_index = len(schedule)` runs the whole schedule (the final `x_0` latents). `stride` > 1 takes about
    one call per `stride` steps (`rollout_path`): the same target timestep, reached by a coarser DDIM.
    """
    if not 0 <= stop_index <= len(schedule):
        raise GuidanceError(f"stop_index {stop_index} is outside the schedule of {len(schedule)} steps")
    if not 0 <= start_index <= stop_index:
        raise GuidanceError(f"start_index {start_index} must be in [0, stop_index={stop_index}]")
    batch = latents.shape[0]
    embeds = torch.cat([_batch(negative_embeds, batch), _batch(prompt_embeds, batch)])
    path = rollout_path(start_index, stop_index, stride)
    for index, to_index in itertools.pairwise(path):
        timestep = schedule.timesteps[index]
        out_n, out_c = _unet(unet, torch.cat([latents, latents]), timestep, embeds).chunk(2)
        latents, _ = ddim_step(schedule, cfg(out_n, out_c, guidance_scale), index, latents, to_index)
    return latents


def one_step_x0(
    unet,
    schedule: DDIMSchedule,
    latents: torch.Tensor,
    index: int,
    negative_embeds: torch.Tensor,
    prompt_embeds: torch.Tensor,
    guidance_scale: float,
) -> torch.Tensor:
    """x̂0 at `timesteps[index]` with the gradient flowing to `negative_embeds` only.

    The prompt branch runs under no_grad; the negative branch keeps activations, so the guided output is
    `(1 − w) out_n + w out_c` with `∂/∂n = (1 − w) ∂out_n/∂n`. `latents` are taken as constants.
    """
    latents = latents.detach()
    timestep = schedule.timesteps[index]
    batch = latents.shape[0]
    with torch.no_grad():
        out_c = _unet(unet, latents, timestep, _batch(prompt_embeds, batch))
    out_n = _unet(unet, latents, timestep, _batch(negative_embeds, batch))
    guided = cfg(out_n, out_c, guidance_scale)
    x0 = predict_x0(guided, latents, schedule.alpha(schedule.timestep(index)), schedule.prediction_type)
    return clamp_x0(schedule, x0)
