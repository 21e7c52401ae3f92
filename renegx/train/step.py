"""The training step, one way for every caller: the Lightning module, the per-prompt tuner and the bench.

docs/design.md, "The training step": draw x_T and the stop indices → no-grad guided rollout to x_t with the
current negative (`rollouts`) → one guided step with grad through the negative branch only → x̂0 → VAE
decode → reward → loss (`loss_at_stops`). What varies between estimators is in `StepRecipe`: how coarse the
rollout is, how many stops share it, the loss. Callers own the negative; the training run's x_t come from a
`RolloutSource` (per-rank noise, rollouts reused or not).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import dataclass, replace

import torch

from renegx.errors import RenegxError
from renegx.guidance import DDIMSchedule, negative_start_index, one_step_x0, rollout_to
from renegx.models.backbone import FROZEN_DTYPES, Backbone, decode_latents
from renegx.rewards import Reward

LOSSES = ("mean", "refl")


class TrainingConfigError(RenegxError):
    pass


@dataclass(frozen=True)
class StepRecipe:
    """What one training step does, beyond the model and the reward.

    guidance_scale: CFG scale w (> 1, else no gradient reaches the negative).
    stop_steps: K; each stop index is drawn uniformly from the last K of the schedule's T steps.
    stops_per_rollout: stops drawn per rollout; one rollout serves them all and the loss is their mean.
    rollout_stride: the no-grad rollout takes about one UNet call per `rollout_stride` steps of the schedule
        (a coarser DDIM to the same x_t timestep); the gradient step stays on the fine schedule. 1: exact.
    loss: `mean` (−mean R) or `refl` (mean relu(τ − R), τ = `refl_threshold`).
    decode_size: decode x̂0 at this size (latents shrunk first), None: the VAE's own size.
    frozen_dtype: the frozen weights' dtype; the reward then runs under autocast to it.
    negative_from: the negative acts on the schedule's window `[negative_from, 1)`; before it the model's
        null stands in (the layout is set without it), so the rollout matches a sampler that applies the
        negative late. Every grad step must lie in the window. 0: every step, as the paper.
    null_pull: λ ≥ 0; the loss adds `λ · mean((n − n_null)²)` (`null_pull`), a pull of the negative towards
        the model's CFG null (the start of a `baseline` negative) that bounds how far the reward may take it.
        0: none, as the paper.
    """

    guidance_scale: float = 7.5
    stop_steps: int = 10
    stops_per_rollout: int = 1
    rollout_stride: int = 1
    loss: str = "mean"
    refl_threshold: float = 2.0
    decode_size: int | None = None
    frozen_dtype: str = "float32"
    negative_from: float = 0.0
    null_pull: float = 0.0

    def check(self, num_inference_steps: int) -> StepRecipe:
        """This recipe, or a one-line error naming what does not fit a schedule of `num_inference_steps`."""
        if self.guidance_scale <= 1:
            raise TrainingConfigError(
                f"guidance_scale must be > 1 for training (got {self.guidance_scale}): without CFG the "
                "negative embedding gets no gradient"
            )
        if not 1 <= self.stop_steps <= num_inference_steps:
            raise TrainingConfigError(
                f"stop_steps must be in [1, num_inference_steps={num_inference_steps}], got {self.stop_steps}"
            )
        for name in ("stops_per_rollout", "rollout_stride"):
            if getattr(self, name) < 1:
                raise TrainingConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.loss not in LOSSES:
            raise TrainingConfigError(f"unknown loss '{self.loss}'; known: {', '.join(LOSSES)}")
        if not 0 <= self.negative_from < 1:
            raise TrainingConfigError(f"negative_from must be a fraction in [0, 1), got {self.negative_from}")
        if self.negative_start(num_inference_steps) > num_inference_steps - self.stop_steps:
            raise TrainingConfigError(
                f"negative_from {self.negative_from} starts the negative after the first grad step (the last "
                f"stop_steps={self.stop_steps} of {num_inference_steps}): no gradient would reach it there"
            )
        if not 0 <= self.null_pull < math.inf:
            raise TrainingConfigError(f"null_pull must be a finite number >= 0, got {self.null_pull}")
        if self.frozen_dtype not in FROZEN_DTYPES:
            known = ", ".join(FROZEN_DTYPES)
            raise TrainingConfigError(f"unknown frozen_dtype '{self.frozen_dtype}'; known: {known}")
        return self

    def negative_start(self, num_inference_steps: int) -> int:
        """The first step index where the negative acts (`negative_from` of the schedule)."""
        return negative_start_index(num_inference_steps, self.negative_from)


def reward_loss(rewards: torch.Tensor, loss: str, refl_threshold: float) -> torch.Tensor:
    """`−mean(R)`, or ReFL's hinge `mean(relu(τ − R))` that stops pushing rewards already above τ."""
    if loss == "mean":
        return -rewards.mean()
    return torch.relu(refl_threshold - rewards).mean()


def null_pull(negative: torch.Tensor, null: torch.Tensor, weight: float) -> torch.Tensor:
    """`weight · mean((negative − null)²)`: what `StepRecipe.null_pull` adds to the loss; its gradient is
    `2 · weight · (negative − null) / negative.numel()`."""
    return weight * (negative - null).pow(2).mean()


def embedding_metrics(
    trainable: torch.Tensor, negative: torch.Tensor, null: torch.Tensor, recipe: StepRecipe
) -> dict[str, torch.Tensor]:
    """What a run logs of its negative: the trainable's norm, the negative's mean squared distance from the
    `null` and, where `recipe.null_pull` (λ) pulls it there, the pull term the loss holds."""
    distance = null_pull(negative.detach(), null, 1.0)
    pull = {"train/null_pull": recipe.null_pull * distance} if recipe.null_pull else {}
    return {"train/embedding_norm": trainable.detach().norm(), "train/null_distance": distance, **pull}


def draw_stop(schedule_length: int, stop_steps: int, generator: torch.Generator | None = None) -> int:
    """A stop index uniform over the last `stop_steps` of `schedule_length` steps (T−K … T−1)."""
    first = schedule_length - stop_steps
    return first + int(torch.randint(stop_steps, (), generator=generator).item())


def draw_stops(
    schedule_length: int, recipe: StepRecipe, generator: torch.Generator | None = None
) -> list[int]:
    """`recipe.stops_per_rollout` stop indices, each drawn by `draw_stop`, in ascending order."""
    return sorted(
        draw_stop(schedule_length, recipe.stop_steps, generator) for _ in range(recipe.stops_per_rollout)
    )


def initial_latents(
    backbone: Backbone, count: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """x_T `(count, C, h, w)`: drawn on the CPU from `generator` (on `device` without one), scaled by the
    scheduler's `init_noise_sigma` (a flow scheduler has none: unit noise), as diffusers pipelines draw
    them."""
    shape = (count, *backbone.latent_shape)
    noise = torch.randn(shape, generator=generator, device="cpu" if generator else device)
    return (noise * getattr(backbone.scheduler, "init_noise_sigma", 1.0)).to(device)


def late_negative(backbone: Backbone, recipe: StepRecipe, num_inference_steps: int) -> dict:
    """`rollout_to`'s keywords for a negative that acts from `recipe.negative_from`: the model's null guides
    the steps before it. Empty when the negative acts at every step."""
    if not recipe.negative_from:
        return {}
    start = recipe.negative_start(num_inference_steps)
    return {"early_negative": backbone.null_embedding(), "negative_start": start}


def rollouts(
    backbone: Backbone,
    schedule: DDIMSchedule,
    recipe: StepRecipe,
    latents: torch.Tensor,
    negative: torch.Tensor,
    prompt_embeds: torch.Tensor,
    stops: list[int],
) -> list[torch.Tensor]:
    """x_t at each of the ascending `stops`, from one no-grad rollout of x_T `latents` with `negative` (the
    null before `recipe.negative_from`)."""
    unet, negative, at, x_t, found = backbone.unet, negative.detach(), 0, latents, []
    late = late_negative(backbone, recipe, len(schedule))
    for stop in stops:
        w = recipe.guidance_scale
        x_t = rollout_to(
            unet, schedule, x_t, negative, prompt_embeds, w, stop, at, recipe.rollout_stride, **late
        )
        found.append(x_t)
        at = stop
    return found


def predicted_images(
    backbone: Backbone,
    schedule: DDIMSchedule,
    recipe: StepRecipe,
    x_t: torch.Tensor,
    stop: int,
    negative: torch.Tensor,
    prompt_embeds: torch.Tensor,
) -> torch.Tensor:
    """x̂0 of one guided step at `stop` from `x_t`, decoded with grad through `negative`: `(B, 3, H, W)`."""
    x0 = one_step_x0(backbone.unet, schedule, x_t, stop, negative, prompt_embeds, recipe.guidance_scale)
    return decode_latents(backbone.vae, x0, recipe.decode_size)


def loss_at_stops(
    backbone: Backbone,
    reward: Reward,
    schedule: DDIMSchedule,
    recipe: StepRecipe,
    prompts: list[str],
    x_ts: list[torch.Tensor],
    stops: list[int],
    negative: torch.Tensor,
    prompt_embeds: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss of the grad steps at `stops` from their `x_ts`, and the rewards `(len(stops) · B,)`.

    With several stops the loss is their mean; each stop's gradient is taken as soon as its reward is known,
    so one stop's graph is held at a time, and the returned tensor carries their sum as its gradient (its
    value is the mean loss). With `recipe.null_pull` the pull towards the model's null is added once.
    """
    precision = (
        torch.autocast(negative.device.type, dtype=FROZEN_DTYPES[recipe.frozen_dtype])
        if recipe.frozen_dtype != "float32"
        else contextlib.nullcontext()
    )
    losses, rewards, grad = [], [], None
    for x_t, stop in zip(x_ts, stops, strict=True):
        images = predicted_images(backbone, schedule, recipe, x_t, stop, negative, prompt_embeds)
        with precision:
            rewards.append(reward(images, prompts))
        losses.append(reward_loss(rewards[-1], recipe.loss, recipe.refl_threshold))
        if len(stops) > 1:
            (stop_grad,) = torch.autograd.grad(losses[-1] / len(stops), negative)
            grad = stop_grad if grad is None else grad + stop_grad
    loss = torch.stack(losses).mean()
    if grad is not None:
        carrier = (negative * grad).sum()
        loss = carrier - carrier.detach() + loss.detach()
    if recipe.null_pull:
        with torch.no_grad():
            null = backbone.null_embedding().to(negative)
        loss = loss + null_pull(negative, null, recipe.null_pull)
    return loss, torch.cat(rewards)


def step_loss(
    backbone: Backbone,
    reward: Reward,
    schedule: DDIMSchedule,
    recipe: StepRecipe,
    prompts: list[str],
    latents: torch.Tensor,
    stops: list[int],
    negative: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole step from x_T `latents` and ascending `stops`: rollout, grad steps, decode, reward, loss."""
    prompt_embeds = backbone.encode_prompts(prompts)
    x_ts = rollouts(backbone, schedule, recipe, latents, negative, prompt_embeds, stops)
    return loss_at_stops(backbone, reward, schedule, recipe, prompts, x_ts, stops, negative, prompt_embeds)


@dataclass(frozen=True)
class ReusedRollout:
    """A rollout's prompts, x_t at each stop and the stops, and how many more steps may reuse them."""

    prompts: list[str]
    x_ts: list[torch.Tensor]
    stops: list[int]
    left: int

    def state_dict(self) -> dict:
        return {
            "prompts": self.prompts,
            "x_ts": [x.cpu() for x in self.x_ts],
            "stops": self.stops,
            "left": self.left,
        }

    @classmethod
    def from_state(cls, state: dict, device: torch.device) -> ReusedRollout:
        x_ts = [x.to(device) for x in state["x_ts"]]
        return cls(list(state["prompts"]), x_ts, list(state["stops"]), int(state["left"]))


def rank_seed(seed: int, rank: int) -> int:
    """A seed for `rank` of a run seeded with `seed`: distinct per rank, unrelated to `seed + 1`'s rank 0."""
    digest = hashlib.sha256(f"renegx-noise:{seed}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class RolloutSource:
    """Where a training run's x_t come from: x_T and stops drawn from the rank's noise generator and rolled
    out with the current negative, or the last ones again while `reuse` allows (the grad step, decode and
    reward are recomputed each time). The generator's state and the reused x_t go into every checkpoint.

    Args:
        backbone, recipe: the frozen models and the step, as the training step takes them.
        reuse: how many training steps one rollout serves (1: a fresh one every step).
    """

    def __init__(self, backbone: Backbone, recipe: StepRecipe, reuse: int = 1):
        self.backbone, self.recipe, self.reuse = backbone, recipe, reuse
        self.generator: torch.Generator | None = None
        self.reused: ReusedRollout | None = None

    def noise_generator(self, rank: int) -> torch.Generator:
        """CPU generator of training noise and stop indices, seeded by (global seed, rank) on first use."""
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(rank_seed(torch.initial_seed(), rank))
        return self.generator

    def rollouts_for(
        self, schedule: DDIMSchedule, prompts: list[str], negative: torch.Tensor, rank: int = 0
    ) -> ReusedRollout:
        """This step's prompts, x_t and stops: fresh (x_T and stops drawn, then the no-grad rollout with
        `negative`), or the last ones while `reuse` allows."""
        if self.reused is not None and self.reused.left > 0:
            self.reused = replace(self.reused, left=self.reused.left - 1)
            return self.reused
        generator = self.noise_generator(rank)
        latents = initial_latents(self.backbone, len(prompts), generator, schedule.device)
        stops = draw_stops(len(schedule), self.recipe, generator)
        embeds = self.backbone.encode_prompts(prompts)
        x_ts = rollouts(self.backbone, schedule, self.recipe, latents, negative, embeds, stops)
        fresh = ReusedRollout(list(prompts), x_ts, stops, left=self.reuse - 1)
        self.reused = fresh if self.reuse > 1 else None
        return fresh

    def load_state(self, state: dict, rank: int, world_size: int, step: int, device: torch.device) -> bool:
        """Continue from a checkpoint's `state` (every rank's noise state stacked in `noise_rng`, and the
        reused rollout if any). False when it was saved by another number of ranks than `world_size`: no
        exact continuation exists, so the noise starts afresh from (global seed + `step`, `rank`)."""
        reused = state.get("reused_rollout")
        self.reused = ReusedRollout.from_state(reused, device) if reused is not None else None
        noise_states = state["noise_rng"]
        if len(noise_states) != world_size:
            self.generator = torch.Generator().manual_seed(rank_seed(torch.initial_seed() + step, rank))
            return False
        # A copy: set_state reads a row view of the stacked states from the wrong place (or crashes).
        self.noise_generator(rank).set_state(noise_states[rank].cpu().clone())
        return True
