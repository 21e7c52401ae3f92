"""Guided sampling with a learned negative, as the run draws its pictures (validation, monitor, held-out).

Full guided sampling from per-seed noise, the negative acting from the recipe's `negative_from` of the
schedule (the model's null before it); several negatives from the same noise share those early steps.
"""

from __future__ import annotations

import torch

from renegx.guidance import DDIMSchedule, rollout_to
from renegx.models.backbone import Backbone
from renegx.schedules import FlowSchedule
from renegx.train.step import StepRecipe, initial_latents, late_negative

Schedule = DDIMSchedule | FlowSchedule


@torch.no_grad()
def shared_start(
    backbone: Backbone, schedule: Schedule, recipe: StepRecipe, prompts: list[str], seeds: list[int]
) -> torch.Tensor:
    """The latents `(B, C, h, w)` where the negatives start to act: x_T from per-seed noise, guided by the
    model's null up to `negative_from` (x_T itself when the negative acts at every step)."""
    noise = [initial_latents(backbone, 1, torch.Generator().manual_seed(s), schedule.device) for s in seeds]
    latents = torch.cat(noise)
    late = late_negative(backbone, recipe, len(schedule))
    if not late:
        return latents
    w, prompt_embeds = recipe.guidance_scale, backbone.encode_prompts(prompts)
    null, start = late["early_negative"], late["negative_start"]
    return rollout_to(backbone.unet, schedule, latents, null, prompt_embeds, w, start)


@torch.no_grad()
def finish_each(
    backbone: Backbone,
    schedule: Schedule,
    recipe: StepRecipe,
    prompts: list[str],
    negatives: dict[str, torch.Tensor],
    latents: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Every one of `negatives` from `shared_start`'s `latents` to its picture (name → `(B, 3, H, W)` in
    [0, 1])."""
    unet, steps, w = backbone.unet, len(schedule), recipe.guidance_scale
    prompt_embeds = backbone.encode_prompts(prompts)
    start = late_negative(backbone, recipe, steps).get("negative_start", 0)
    return {
        name: backbone.decode_to_pixels(
            rollout_to(unet, schedule, latents, negative, prompt_embeds, w, steps, start)
        )
        for name, negative in negatives.items()
    }


def sample_each(
    backbone: Backbone,
    schedule: Schedule,
    recipe: StepRecipe,
    prompts: list[str],
    negatives: dict[str, torch.Tensor],
    seeds: list[int],
) -> dict[str, torch.Tensor]:
    """Every one of `negatives` sampled from the same per-seed noise (name → `(B, 3, H, W)` in [0, 1]): the
    steps before `negative_from`, where each of them is the model's null, run once for all."""
    latents = shared_start(backbone, schedule, recipe, prompts, seeds)
    return finish_each(backbone, schedule, recipe, prompts, negatives, latents)
