"""Pure math of guided DDIM sampling and of ReNeg's one-step training prediction.

The steps and x̂0 are the schedule's (`renegx.schedules`, the contract the samplers step over too; the DDIM
schedule is re-exported here for the training side); this module adds classifier-free guidance, the
graph-free rollout and the one step with the gradient.
Shapes: latents `(B, C, h, w)`; text embeddings `(B | 1, L, D)`; a negative of batch 1 is broadcast.
"""

from __future__ import annotations

import itertools

import torch

from renegx.schedules import DDIMSchedule, ScheduleError, ddim_schedule

__all__ = [
    "DDIMSchedule",
    "GuidanceError",
    "ddim_schedule",
    "ddim_step",
    "guided_output",
    "one_step_x0",
    "rollout_path",
    "rollout_to",
]


class GuidanceError(ScheduleError):
    pass


def guided_output(
    negative_output: torch.Tensor, positive_output: torch.Tensor, guidance_scale: float
) -> torch.Tensor:
    """Classifier-free guidance: `out_n + w (out_c − out_n)`, on ε, v or x̂0 alike."""
    return negative_output + guidance_scale * (positive_output - negative_output)


def ddim_step(
    schedule: DDIMSchedule,
    model_output: torch.Tensor,
    index: int,
    sample: torch.Tensor,
    to_index: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`schedule.step`: one η = 0 DDIM step from `timesteps[index]` to `timesteps[to_index]` (default the
    next one; the end of the schedule is `len(schedule)`); returns `(prev_sample, x̂0)`."""
    return schedule.step(model_output, index, sample, to_index)


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


def negative_start_index(num_steps: int, start_fraction: float) -> int:
    """The first step index `i` of `num_steps` with `i / num_steps >= start_fraction`: where a negative that
    acts on the window `[start_fraction, 1)` of the schedule takes over (the samplers' `Window` agrees)."""
    if not 0 <= start_fraction < 1:
        raise GuidanceError(f"a negative's start must be a fraction in [0, 1), got {start_fraction}")
    return next(i for i in range(num_steps + 1) if i / num_steps >= start_fraction)


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
    early_negative: torch.Tensor | None = None,
    negative_start: int = 0,
) -> torch.Tensor:
    """Guided DDIM from `latents` at `timesteps[start_index]` (x_T for 0) to x_t at `timesteps[stop_index]`.

    One UNet call per step on `cat([negative, prompt])`; no autograd graph is built.
    `stop_index = len(schedule)` runs the whole schedule (the final `x_0` latents). `stride` > 1 takes about
    one call per `stride` steps (`rollout_path`): the same target timestep, reached by a coarser DDIM.
    `early_negative` stands in for `negative` at the step indices before `negative_start` (a negative that
    acts late, once the layout is set: `negative_start_index`).
    """
    if not 0 <= stop_index <= len(schedule):
        raise GuidanceError(f"stop_index {stop_index} is outside the schedule of {len(schedule)} steps")
    if not 0 <= start_index <= stop_index:
        raise GuidanceError(f"start_index {start_index} must be in [0, stop_index={stop_index}]")
    if early_negative is not None and start_index < negative_start:
        switch = min(negative_start, stop_index)
        latents = rollout_to(
            unet,
            schedule,
            latents,
            early_negative,
            prompt_embeds,
            guidance_scale,
            switch,
            start_index,
            stride,
        )
        start_index = switch
    batch = latents.shape[0]
    embeds = torch.cat([_batch(negative_embeds, batch), _batch(prompt_embeds, batch)])
    path = rollout_path(start_index, stop_index, stride)
    for index, to_index in itertools.pairwise(path):
        timestep = schedule.timesteps[index]
        out_n, out_c = _unet(unet, torch.cat([latents, latents]), timestep, embeds).chunk(2)
        latents, _ = schedule.step(guided_output(out_n, out_c, guidance_scale), index, latents, to_index)
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
    return schedule.x0(guided_output(out_n, out_c, guidance_scale), index, latents)
