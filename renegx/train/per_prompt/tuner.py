"""The per-prompt tuner: a batch of prompts, a row each, tuned from the global embedding with early stopping.

Each step is the training step of `renegx.train.step` on that prompt alone (fresh noise per prompt and
step, one grad step, decode, reward). After every step the prompt is scored on its fixed evaluation noise and
the best iterate is kept (step 0 is the global embedding). See the package docstring.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

import torch

from renegx.errors import RenegxError
from renegx.guidance import DDIMSchedule, rollout_to
from renegx.models.backbone import Backbone
from renegx.rewards import Reward
from renegx.schedules import FlowSchedule
from renegx.train.step import StepRecipe, draw_stop, initial_latents, late_negative, loss_at_stops

RUN_KEY = "per_prompt_run"
RECORDS_KEY = "per_prompt_records"
ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")


class PerPromptError(RenegxError):
    pass


@dataclass(frozen=True)
class PerPromptSettings:
    """How each prompt is tuned.

    max_steps: N, the most gradient steps per prompt.
    patience: P, stop after P steps in a row that do not beat the best evaluation reward.
    eval_seeds: the fixed noise every step is scored on (the same seeds for every prompt and step).
    batch_prompts: prompts tuned at once. train_samples: noise samples per prompt in each gradient step.
    grad_chunk: prompts whose grad step (one UNet call with grad, the decode and the reward) runs at once;
        the rest wait, which bounds the activation memory (the same gradient, up to float rounding);
        None: the whole batch.
    lr, betas, weight_decay: AdamW's. seed: draws the training noise and stop steps.
    """

    max_steps: int = 10
    patience: int = 3
    eval_seeds: tuple[int, ...] = (0, 1, 2, 3)
    batch_prompts: int = 8
    train_samples: int = 1
    grad_chunk: int | None = None
    lr: float = 5e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("max_steps", "patience", "batch_prompts", "train_samples"):
            if getattr(self, name) < 1:
                raise PerPromptError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.grad_chunk is not None and self.grad_chunk < 1:
            raise PerPromptError(f"grad_chunk must be >= 1, got {self.grad_chunk}")
        if not self.eval_seeds:
            raise PerPromptError("eval_seeds must not be empty")
        if not self.lr > 0:
            raise PerPromptError(f"lr must be > 0, got {self.lr}")
        if self.patience >= self.max_steps:
            warnings.warn(
                f"patience {self.patience} >= max_steps {self.max_steps}: early stopping never triggers, "
                "every prompt takes all steps (the best iterate is still kept)",
                UserWarning,
                stacklevel=3,
            )


@dataclass
class PromptResult:
    """One prompt's run; rewards[s]: mean evaluation reward after s steps (rewards[0]: the global one)."""

    prompt: str
    rewards: list[float]
    best_step: int
    stop_step: int
    stopped_by: str  # "patience" | "max_steps"

    @property
    def gain(self) -> float:
        """Evaluation reward of the kept iterate minus the global embedding's (>= 0 by construction)."""
        return self.rewards[self.best_step] - self.rewards[0]

    def to_json(self) -> dict:
        return {**asdict(self), "gain": self.gain}


def derived_seed(*parts: object) -> int:
    """A 63-bit seed from the parts' text: the same parts give the same seed in any process."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def step_rows(optimizer: torch.optim.Optimizer, rows: torch.Tensor, active: torch.Tensor) -> None:
    """`optimizer.step()` that changes only the rows of `rows` `(N, ...)` flagged in `active` `(N,)` bool.

    Adam(W) is elementwise, so stepping an `(N, L, D)` tensor whose row i only sees prompt i's gradient is N
    independent optimisers; the step count is shared, which is exact because rows only ever stop. Rows of
    stopped prompts get their value and Adam moments put back, so they no longer change at all.
    """
    frozen = ~active.to(rows.device)
    state = optimizer.state[rows]
    kept = {name: state[name][frozen].clone() for name in ADAM_MOMENTS if name in state}
    value = rows.detach()[frozen].clone()
    optimizer.step()
    with torch.no_grad():
        rows[frozen] = value
        for name in ADAM_MOMENTS:
            if name in state:
                state[name][frozen] = kept.get(name, 0.0)


class PerPromptTuner:
    """Tunes a batch of prompts from a global embedding against a frozen backbone and reward.

    Args:
        backbone, reward: the frozen model and the (differentiable) reward, as in training.
        num_inference_steps: T of the training step and of evaluation.
        recipe: the training step's `StepRecipe` (w, K, the loss), as the global run's; each step has one
            stop, shared by the batch, and rolls out on the fine schedule (the evaluation's rollout carries
            it).
        settings: `PerPromptSettings`.
    """

    def __init__(
        self,
        backbone: Backbone,
        reward: Reward,
        *,
        num_inference_steps: int = 30,
        recipe: StepRecipe | None = None,
        settings: PerPromptSettings | None = None,
    ):
        recipe = recipe or StepRecipe()
        self.recipe = replace(recipe, stops_per_rollout=1, rollout_stride=1).check(num_inference_steps)
        self.backbone = backbone
        self.reward = reward
        self.num_inference_steps = num_inference_steps
        self.settings = settings or PerPromptSettings()
        self._schedule = backbone.schedule(num_inference_steps)

    @property
    def device(self) -> torch.device:
        return self.backbone.unet.device

    @property
    def schedule(self) -> DDIMSchedule | FlowSchedule:
        """The schedule (DDIM, or Euler for a flow model) on the UNet's device (no timestep copied from the
        host per UNet call)."""
        if self._schedule.device != self.device:
            self._schedule = self._schedule.to(self.device)
        return self._schedule

    def describe(self) -> dict:
        """Everything that decides a prompt's result (not how prompts are batched), JSON-ready."""
        settings = asdict(self.settings)
        del settings["batch_prompts"], settings["grad_chunk"]
        return {
            "base_model": self.backbone.name,
            "clip_skip": self.backbone.clip_skip,
            "reward": self.reward.name,
            "guidance_scale": self.recipe.guidance_scale,
            "num_inference_steps": self.num_inference_steps,
            "stop_steps": self.recipe.stop_steps,
            **self._recipe_beyond_default(),
            **{f"per_prompt_{key}": list(v) if isinstance(v, tuple) else v for key, v in settings.items()},
        }

    def _recipe_beyond_default(self) -> dict:
        """The recipe's loss, decode and dtype settings where they differ from the default (which older
        parts folders were described without)."""
        default = StepRecipe()
        keys = ("loss", "refl_threshold", "decode_size", "frozen_dtype", "negative_from")
        return {
            key: getattr(self.recipe, key)
            for key in keys
            if getattr(self.recipe, key) != getattr(default, key)
        }

    # -- noise ----------------------------------------------------------------------------------------------
    def _noise(self, count: int, seed: int) -> torch.Tensor:
        """`count` initial latents from `Generator().manual_seed(seed)`, as diffusers pipelines draw them."""
        return initial_latents(self.backbone, count, torch.Generator().manual_seed(seed), self.device)

    def stop_index(self, step: int) -> int:
        """The grad step's schedule index at tuning step `step`: uniform over the last K of T."""
        generator = torch.Generator().manual_seed(derived_seed(self.settings.seed, "stop", step))
        return draw_stop(len(self.schedule), self.recipe.stop_steps, generator)

    # -- the two passes -------------------------------------------------------------------------------------
    def _training_batch(self, prompts: list[str], negatives: torch.Tensor, step: int):
        """x_T, negative rows and prompt embeddings of tuning step `step`'s `train_samples` per prompt."""
        samples, seed = self.settings.train_samples, self.settings.seed
        latents = torch.cat([self._noise(samples, derived_seed(seed, prompt, step)) for prompt in prompts])
        prompt_embeds = self.backbone.encode_prompts(prompts).repeat_interleave(samples, 0)
        return latents, negatives.repeat_interleave(samples, 0), prompt_embeds

    def _seed_batch(self, prompts: list[str], negatives: torch.Tensor, seeds: list[int]):
        """x_T from each seed for every prompt, prompt-major, with its negative row and prompt embedding."""
        count, per_prompt = len(prompts), len(seeds)
        latents = torch.cat([self._noise(1, seed) for seed in seeds]).repeat(count, 1, 1, 1)
        negatives = negatives.to(self.device).expand(count, -1, -1).repeat_interleave(per_prompt, 0)
        prompt_embeds = self.backbone.encode_prompts(prompts).repeat_interleave(per_prompt, 0)
        return latents, negatives, prompt_embeds

    def guided_rollout(self, latents, negatives, prompt_embeds, stop_index: int, start_index: int = 0):
        """x_t at `stop_index` from `latents` at `start_index` by no-grad guided steps of the recipe."""
        unet, w = self.backbone.unet, self.recipe.guidance_scale
        late = late_negative(self.backbone, self.recipe, len(self.schedule))
        return rollout_to(
            unet, self.schedule, latents, negatives, prompt_embeds, w, stop_index, start_index, **late
        )

    def rollouts(
        self, prompts: list[str], negatives: torch.Tensor, step: int, ready: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """`ready` completed: prompt → its x_t of tuning step `step`, the missing rollouts run in one batch.

        ready: prompt → x_t where `evaluate_and_roll` already ran the rollout. negatives: `(A, L, D)`.
        """
        return self._roll_missing(prompts, self._training_batch(prompts, negatives, step), step, ready)

    def _roll_missing(self, prompts: list[str], batch, step: int, ready: Mapping[str, torch.Tensor]) -> dict:
        latents, negatives, prompt_embeds = batch
        samples, ready = self.settings.train_samples, dict(ready)
        todo = [i for i, prompt in enumerate(prompts) if prompt not in ready]
        if todo:
            rows = torch.tensor([i * samples + j for i in todo for j in range(samples)], device=self.device)
            index = self.stop_index(step)
            ran = self.guided_rollout(latents[rows], negatives.detach()[rows], prompt_embeds[rows], index)
            ready.update(zip([prompts[i] for i in todo], ran.split(samples), strict=True))
        return ready

    def training_loss(
        self,
        prompts: list[str],
        negatives: torch.Tensor,
        step: int,
        ready: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Σ over prompts of the recipe's loss on `train_samples` one-step predictions, so that row i's
        gradient is exactly prompt i's single-prompt gradient. negatives: `(A, L, D)` with grad, one row per
        prompt.

        ready: prompt → its x_t of this step (`rollouts`); the missing ones are rolled out here.
        """
        batch = self._training_batch(prompts, negatives, step)
        ready = self._roll_missing(prompts, batch, step, ready or {})
        _, negatives, prompt_embeds = batch
        index, samples = self.stop_index(step), self.settings.train_samples
        x_t = torch.cat([ready[prompt] for prompt in prompts])
        texts = [p for p in prompts for _ in range(samples)]
        loss, _ = loss_at_stops(
            self.backbone,
            self.reward,
            self.schedule,
            self.recipe,
            texts,
            [x_t],
            [index],
            negatives,
            prompt_embeds,
        )
        # every prompt has `samples` rows, so the batch mean times the prompts is the sum of per-prompt means
        return loss * len(prompts)

    def _judge_final(
        self, final, prompts: list[str], seeds: list[int], reward: Reward | None
    ) -> torch.Tensor:
        images = self.backbone.decode_to_pixels(final)
        scores = (reward or self.reward)(images, [p for p in prompts for _ in seeds])
        return scores.view(len(prompts), len(seeds))

    @torch.no_grad()
    def seed_rewards(
        self, prompts: list[str], negatives: torch.Tensor, seeds: list[int], reward: Reward | None = None
    ) -> torch.Tensor:
        """Rewards `(A, S)` of the final images of full guided sampling from each seed's noise.

        negatives: `(A, L, D)` (or `(1, L, D)` for all); reward: default the tuning reward (e.g. a judge).
        """
        final = self.guided_rollout(*self._seed_batch(prompts, negatives, seeds), len(self.schedule))
        return self._judge_final(final, prompts, seeds, reward)

    @torch.no_grad()
    def evaluate_and_roll(
        self, prompts: list[str], negatives: torch.Tensor, step: int | None = None, along: list[str] = ()
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The mean reward `(A,)` on the fixed evaluation seeds, and, in the same UNet calls, tuning step
        `step`'s no-grad rollouts of the prompts in `along`: prompt → x_t `(train_samples, ...)`.

        Both start from these rows, so the rollouts' latents ride along with the evaluation's up to the step's
        stop index: fewer, fuller calls. The values are those of `seed_rewards` and of `training_loss`'s own
        rollouts, up to float rounding.
        """
        seeds = list(self.settings.eval_seeds)
        latents, rows, prompt_embeds = self._seed_batch(prompts, negatives, seeds)
        start, ready = 0, {}
        if step is not None and along:
            start = self.stop_index(step)
            riding = torch.tensor([prompts.index(p) for p in along], device=self.device)
            extra = self._training_batch(along, negatives.to(self.device)[riding], step)
            both = self.guided_rollout(
                *(torch.cat([a, b]) for a, b in zip((latents, rows, prompt_embeds), extra, strict=True)),
                start,
            )
            latents, x_t = both[: len(latents)], both[len(latents) :]
            ready = dict(zip(along, x_t.split(self.settings.train_samples), strict=True))
        final = self.guided_rollout(latents, rows, prompt_embeds, len(self.schedule), start)
        return self._judge_final(final, prompts, seeds, None).mean(1), ready

    # -- the loop -------------------------------------------------------------------------------------------
    def tune(
        self, prompts: list[str], global_embeds: torch.Tensor
    ) -> tuple[torch.Tensor, list[PromptResult]]:
        """Tune distinct `prompts` at once from `global_embeds` `(1, L, D)`.

        Returns the kept rows `(A, L, D)` float32 on CPU and one `PromptResult` per prompt.
        """
        if len(set(prompts)) != len(prompts):
            raise PerPromptError("tune() takes distinct prompts; map repeats to one row")
        settings, count = self.settings, len(prompts)
        start = global_embeds.detach().to(self.device, torch.float32)
        rows = start.expand(count, -1, -1).clone().requires_grad_(True)
        optimizer = torch.optim.AdamW(
            [rows], lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay
        )
        best_step, waited = torch.zeros(count, dtype=torch.long), torch.zeros(count, dtype=torch.long)

        def unstoppable(indices: torch.Tensor) -> list[str]:
            """Prompts the coming evaluation cannot stop (fewer than patience - 1 steps in a row without
            beating their best): their next rollout rides along; the others' run in the training step."""
            return [prompts[i] for i in indices.tolist() if waited[i] < settings.patience - 1]

        first, ready = self.evaluate_and_roll(prompts, rows.detach(), 1, unstoppable(torch.arange(count)))
        first = first.cpu()
        rewards = [[value] for value in first.tolist()]
        best, best_rows = first.clone(), rows.detach().clone()
        stop_step = torch.full((count,), settings.max_steps)
        active = torch.ones(count, dtype=torch.bool)
        for step in range(1, settings.max_steps + 1):
            live = active.nonzero().squeeze(1)
            if len(live) == 0:
                break
            names = [prompts[i] for i in live.tolist()]
            optimizer.zero_grad()
            chunk = settings.grad_chunk or len(names)
            if chunk < len(names):  # the no-grad rollouts in one batch still, the grad steps chunk by chunk
                ready = self.rollouts(names, rows.detach()[live.to(self.device)], step, ready)
            for first in range(0, len(names), chunk):
                part = live[first : first + chunk].to(self.device)
                self.training_loss(names[first : first + chunk], rows[part], step, ready).backward()
            step_rows(optimizer, rows, active)
            next_step = step + 1 if step < settings.max_steps else None
            scores, ready = self.evaluate_and_roll(
                names, rows.detach()[live.to(self.device)], next_step, unstoppable(live)
            )
            scores = scores.cpu()
            for i, value in zip(live.tolist(), scores.tolist(), strict=True):
                rewards[i].append(value)
            improved = scores > best[live]
            better = live[improved]
            best[better], best_step[better] = scores[improved], step
            best_rows[better.to(self.device)] = rows.detach()[better.to(self.device)]
            waited[live] = torch.where(improved, 0, waited[live] + 1)
            done = live[waited[live] >= settings.patience]
            active[done], stop_step[done] = False, step
        results = [
            PromptResult(
                prompt,
                rewards[i],
                int(best_step[i]),
                int(stop_step[i]),
                "max_steps" if active[i] else "patience",
            )
            for i, prompt in enumerate(prompts)
        ]
        return best_rows.cpu(), results
