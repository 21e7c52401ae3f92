"""ReNegModule: learn one negative embedding by reward feedback (orchestration only).

The Lightning hooks of one run: logging, checkpoint content, validation, the optimiser. The step itself
(docs/design.md, "The training step") and the x_t it starts from are in `renegx.train.step`, the settings'
help and checks in `renegx.train.settings`, pictures in `renegx.train.sampling`.
"""

from __future__ import annotations

import contextlib
import math
from itertools import chain

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from renegx.guidance import DDIMSchedule
from renegx.models import load_backbone
from renegx.models.backbone import Backbone
from renegx.negatives.textual_inversion import encode_vectors, token_encoders
from renegx.rewards import NonFiniteRewardError, Reward
from renegx.rewards.base import deferred_value_checks
from renegx.schedules import FlowSchedule
from renegx.train import settings
from renegx.train.checkpoint_io import check_held_negative
from renegx.train.compile_check import check_compiled_gradient
from renegx.train.guards import NonFiniteGuard, poisoned_if_nonfinite, poisoned_loss, stop_if_exhausted
from renegx.train.sampling import sample_each
from renegx.train.step import RolloutSource, TrainingConfigError, embedding_metrics, loss_at_stops, step_loss  # noqa: F401 (re-exported)


def cosine_with_warmup(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warmup to 1, then cosine decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class ReNegModule(L.LightningModule):
    """Learns a negative `(1, L, D)` against a frozen model and reward: in the text encoder's output space
    `negative_embeds` itself (from the CFG null by default), or in token space `negative_tokens`, N
    input-token vectors that the frozen text encoder(s) turn into the negative (a textual inversion)."""

    # What each setting means, beside their checks; LightningCLI's help reads it.
    __doc__ += settings.HELP

    def __init__(
        self,
        reward: Reward,
        model: str | Backbone = "tiny",
        model_config: str | None = None,
        clip_skip: int | None = None,
        prediction_type: str | None = None,
        negative_init: str = "baseline",
        guidance_scale: float = 7.5,
        num_inference_steps: int = 30,
        stop_steps: int = 10,
        negative_from: float = 0.0,
        null_pull: float = 0.0,
        loss: str = "mean",
        refl_threshold: float = 2.0,
        lr: float = 5e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        val_seed: int = 1234,
        max_bad_steps: int = 10,
        frozen_dtype: str = "float32",
        attention: str = "sdpa",
        channels_last: bool = False,
        gradient_checkpointing: bool = False,
        compile: bool = False,
        decode_at_reward_size: bool = False,
        stops_per_rollout: int = 1,
        rollout_stride: int = 1,
        reuse_rollouts: int = 1,
        val_every_n_steps: int | None = None,
        space: str = "output",
        num_tokens: int = 8,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["reward", "model"])
        self.recipe = settings.checked_recipe(self.hparams, getattr(reward, "image_size", None))
        built = isinstance(model, Backbone)
        backbone = model if built else load_backbone(model, clip_skip, prediction_type, config=model_config)
        self.hparams["model"] = backbone.name if built else model
        performance = {name: self.hparams[name] for name in settings.PERFORMANCE}
        self.backbone: Backbone = backbone.configure_performance(**performance)
        self.reward = reward
        self._schedule = self.backbone.schedule(num_inference_steps)
        null = self.backbone.null_embedding()
        self.register_buffer("null_embeds", null, persistent=False)
        start = settings.initial_negative(self.backbone, null, negative_init, space, num_tokens)
        setattr(self, self.trainable_name, nn.Parameter(start))
        self._null_val_rewards: dict[int, torch.Tensor] = {}
        # Checkpoints hold the embedding and training state only; the frozen models are rebuilt from config.
        self.strict_loading = False
        self.guard = NonFiniteGuard(max_bad_steps)
        self.rollout_source = RolloutSource(self.backbone, self.recipe, reuse_rollouts)
        self._compiled_gradient_checked = not compile

    @property
    def trainable_name(self) -> str:
        """The one trainable parameter's name: `negative_embeds` (output space) or `negative_tokens`."""
        return "negative_tokens" if self.tokens else "negative_embeds"

    @property
    def trainable(self) -> nn.Parameter:
        """The one trainable parameter: what the optimiser, the guard, DDP and checkpoints hold."""
        return getattr(self, self.trainable_name)

    @property
    def tokens(self) -> bool:
        """Whether the negative is learned as input-token vectors (`space: tokens`)."""
        return self.hparams.space == "tokens"

    def token_vectors(self) -> list[torch.Tensor]:
        """Token space: the vectors per text encoder, `(N, width)` each (SDXL: CLIP-L's, then CLIP-G's)."""
        widths = [text.get_input_embeddings().embedding_dim for _, text in token_encoders(self.backbone)]
        return list(self.negative_tokens.split(widths, dim=1))

    def learned_negative(self) -> torch.Tensor:
        """The learned negative as the UNet takes it, `(1, L, D)` (SDXL packed `(1, L + 1, D)`); in token
        space the encoder's output over the vectors, with the graph back to them when grad is enabled."""
        return encode_vectors(self.backbone, self.token_vectors()) if self.tokens else self.negative_embeds

    @property
    def schedule(self) -> DDIMSchedule | FlowSchedule:
        """The schedule (DDIM; Euler for a flow model) on the module's device (moved once per `.to()`)."""
        if self._schedule.device != self.device:
            self._schedule = self._schedule.to(self.device)
        return self._schedule

    def setup(self, stage: str) -> None:
        if self.hparams.reuse_rollouts > 1:
            settings.check_processes(self.hparams.reuse_rollouts, self.trainer.world_size)
        settings.check_precision(str(self.trainer.precision))

    def on_train_start(self) -> None:
        every = self.hparams.val_every_n_steps
        if every is not None:
            settings.check_validation_interval(every, self.trainer.check_val_every_n_epoch)
            # Lightning counts this interval in micro-batches; set after it reads val_check_interval.
            self.trainer.val_check_batch = every * self.trainer.accumulate_grad_batches

    # -- checkpoint content ---------------------------------------------------------------------------------
    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        return {prefix + self.trainable_name: self.trainable if keep_vars else self.trainable.detach()}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Add what exact resume needs beyond Lightning's state: every rank's noise RNG (gathered: this runs
        on every rank, rank 0 writes), the skip counters and the reused x_t."""
        state = self.rollout_source.noise_generator(self.global_rank).get_state()
        states = self.all_gather(state.to(self.device)).cpu() if self.trainer.world_size > 1 else state[None]
        checkpoint["renegx"] = {"noise_rng": states, "guard": self.guard.state_dict()}
        if self.rollout_source.reused is not None:
            checkpoint["renegx"]["reused_rollout"] = self.rollout_source.reused.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        where = f"checkpoint {self.trainer.ckpt_path}" if self._trainer is not None else "checkpoint"
        held, space, model = checkpoint.get("state_dict", {}), self.hparams.space, self.hparams.model
        check_held_negative(held, self.trainable_name, self.trainable.shape, where, space, model)
        extra = checkpoint.get("renegx")
        if extra is None:
            return
        self.guard.load_state_dict(extra["guard"])
        world_size = self.trainer.world_size if self._trainer is not None else 1
        step = checkpoint.get("global_step", 0)
        if not self.rollout_source.load_state(extra, self.global_rank, world_size, step, self.device):
            rank_zero_warn(
                f"{where} was saved by {len(extra['noise_rng'])} ranks: the training noise starts afresh"
            )

    @property
    def _ddp_params_and_buffers_to_ignore(self) -> list[str]:
        """Read by DDP: the frozen models (identical on every rank) are neither broadcast nor synchronised."""
        named = chain(self.named_parameters(), self.named_buffers())
        return [name for name, _ in named if name != self.trainable_name]

    # -- the step -------------------------------------------------------------------------------------------
    @property
    def _noise_generator(self) -> torch.Generator | None:
        """The rollout source's noise generator (benches seed it by setting this)."""
        return self.rollout_source.generator

    @_noise_generator.setter
    def _noise_generator(self, generator: torch.Generator | None) -> None:
        self.rollout_source.generator = generator

    @property
    def step_parts(self) -> tuple:
        """What the functions of `renegx.train.step` take first: backbone, reward, schedule, recipe."""
        return self.backbone, self.reward, self.schedule, self.recipe

    def step_loss(
        self, prompts: list[str], latents: torch.Tensor, stops: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`renegx.train.step.step_loss` from noise `latents` with this module's parts and negative."""
        return step_loss(*self.step_parts, prompts, latents, stops, self.learned_negative())

    def training_loss(self, prompts: list[str], rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's loss and rewards for `prompts`, from the rollout source's x_t (fresh or reused)."""
        negative = self.learned_negative()
        rolled = self.rollout_source.rollouts_for(self.schedule, prompts, negative.detach(), rank)
        embeds = self.backbone.encode_prompts(rolled.prompts)
        return loss_at_stops(*self.step_parts, rolled.prompts, rolled.x_ts, rolled.stops, negative, embeds)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        if not self._compiled_gradient_checked:
            check_compiled_gradient(self, batch["prompts"])
            self._compiled_gradient_checked = True

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # On an accelerator the reward's value checks would wait for the device at every call: they are left
        # to the gradient, which a non-finite reward turns non-finite, and to the guard that then skips it.
        on_host = self.device.type == "cpu"
        prompts = batch["prompts"]
        try:
            with contextlib.nullcontext() if on_host else deferred_value_checks():
                loss, rewards = self.training_loss(prompts, self.global_rank)
        except NonFiniteRewardError:
            # Every rank must still run backward (DDP all-reduces there): a NaN gradient skips the update.
            return poisoned_loss(self.trainable)
        if not on_host:
            loss = poisoned_if_nonfinite(loss, rewards, self.trainable)
        spread = rewards.std() if len(rewards) > 1 else torch.zeros(())
        values = {"train/loss": loss, "train/reward_mean": rewards.mean(), "train/reward_std": spread}
        values |= embedding_metrics(self.trainable, self.learned_negative(), self.null_embeds, self.recipe)
        self.log_dict(values, prog_bar=True, batch_size=len(prompts))
        if components := getattr(self.reward, "last_components", None):
            values = {f"train/reward/{name}": scores.mean() for name, scores in components.items()}
            self.log_dict(values, batch_size=len(prompts))
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.guard.admit(self.trainable):
            self.log("train/grad_norm", self.trainable.grad.norm(), batch_size=1)
        else:
            rank_zero_warn(
                f"step {self.global_step}: non-finite reward, loss or gradient, update skipped "
                f"({self.guard.in_a_row} in a row, {self.guard.skipped} in all)"
            )
        self.log("train/skipped_steps", float(self.guard.skipped), batch_size=1)
        self.log("train/lr", optimizer.param_groups[0]["lr"], batch_size=1)

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        stop_if_exhausted(self.trainer, self.guard, self.global_step)

    # -- validation: learned vs null on fixed prompts and fixed noise ---------------------------------------
    def sample_images(self, prompts: list[str], negative: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        """`negative`'s pictures `(B, 3, H, W)` in [0, 1] from per-seed noise (`renegx.train.sampling`)."""
        return self.sample_each(prompts, {"": negative}, seeds)[""]

    def sample_each(
        self, prompts: list[str], negatives: dict[str, torch.Tensor], seeds: list[int]
    ) -> dict[str, torch.Tensor]:
        """`renegx.train.sampling.sample_each` with this module's backbone, schedule and recipe."""
        return sample_each(self.backbone, self.schedule, self.recipe, prompts, negatives, seeds)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        prompts, indices = batch["prompts"], batch["indices"].tolist()
        seeds = [self.hparams.val_seed + i for i in indices]
        learned = self.reward(self.sample_images(prompts, self.learned_negative(), seeds), prompts)
        missing = [k for k, i in enumerate(indices) if i not in self._null_val_rewards]
        if missing:
            sub_prompts = [prompts[k] for k in missing]
            null_images = self.sample_images(sub_prompts, self.null_embeds, [seeds[k] for k in missing])
            for k, value in zip(missing, self.reward(null_images, sub_prompts), strict=True):
                self._null_val_rewards[indices[k]] = value
        null = torch.stack([self._null_val_rewards[i] for i in indices])
        rewards = {"val/reward": learned.mean(), "val/reward_null": null.mean()}
        rewards["val/reward_gain"] = (learned - null).mean()
        # sync_dist: each rank scores its share of the validation prompts
        self.log_dict(rewards, prog_bar=True, batch_size=len(prompts), sync_dist=True)

    # -- optimisation ---------------------------------------------------------------------------------------
    def optimizer_and_schedule(self, total_steps: int) -> tuple[torch.optim.Optimizer, LambdaLR]:
        """AdamW over the trainable and its per-step LR: warmup, then cosine to 0 at `total_steps`."""
        lr, betas, decay, warmup = (self.hparams[k] for k in ("lr", "betas", "weight_decay", "warmup_steps"))
        optimizer = torch.optim.AdamW([self.trainable], lr=lr, betas=tuple(betas), weight_decay=decay)
        steps = max(1, total_steps)
        return optimizer, LambdaLR(optimizer, lambda step: cosine_with_warmup(step, warmup, steps))

    def configure_optimizers(self):
        optimizer, schedule = self.optimizer_and_schedule(int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def export_metadata(self) -> dict[str, str]:
        """What an exported file records about how it was made."""
        return {
            "base_model": self.backbone.name,
            **self.backbone.text_encoder_metadata(),
            "reward": self.reward.name,
            **settings.recorded_settings(self.hparams),
            "train_steps": str(self.global_step),
        }
