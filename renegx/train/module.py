"""ReNegModule: learn one negative embedding by reward feedback (orchestration only).

Training step (docs/design.md, "The training step"; written once in `renegx.train.step`): draw x_T and a
stop index in the last K of T DDIM steps → no-grad CFG rollout to x_t with the current negative → one step
with grad through the negative branch only → x̂0 → VAE decode → reward → loss. The negative embedding is the
only trainable parameter. The Lightning hooks of one run live here (logging, checkpoint content, the
optimiser); the settings' checks, the step, the x_t source, sampling and the compile check live beside it.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import replace
from itertools import chain

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from renegx.guidance import DDIMSchedule
from renegx.models import load_backbone
from renegx.models.backbone import Backbone
from renegx.negatives.textual_inversion import (
    TextualInversionError,
    encode_vectors,
    padding_vectors,
    token_encoders,
)
from renegx.rewards import NonFiniteRewardError, Reward
from renegx.rewards.base import deferred_value_checks
from renegx.schedules import FlowSchedule
from renegx.train.compile_check import check_compiled_gradient
from renegx.train.guards import NonFiniteGuard, poisoned_if_nonfinite, poisoned_loss, stop_if_exhausted
from renegx.train.sampling import sample_each
from renegx.train.settings import check_precision, check_processes, checked_recipe
from renegx.train.step import RolloutSource, TrainingConfigError, loss_at_stops, step_loss


def cosine_with_warmup(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warmup to 1, then cosine decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class ReNegModule(L.LightningModule):
    """Learns a negative `(1, L, D)` against a frozen model and reward: in the text encoder's output space
    `negative_embeds` itself (from the CFG null by default), or in token space `negative_tokens`, N
    input-token vectors that the frozen text encoder(s) turn into the negative (a textual inversion).

    Args:
        model: a family name (`tiny`, `tiny-sdxl`, `toy`, ...), a local diffusers folder, a hub id or a
            single-file checkpoint (`.safetensors` in the original SD/SDXL layout), read by
            `renegx.models.load_backbone`; or a `Backbone` already built (benches, tests). For SDXL the
            parameter is the packed conditioning `(1, 78, 2048)` of `renegx.models.sdxl`: token rows and the
            pooled vector, both learned, exported as `negative_prompt_embeds` and
            `negative_pooled_prompt_embeds`; for SD3.5 likewise `(1, 77 + 256 + 1, 4096)`.
        model_config: for a single-file `model`, the diffusers folder or hub id of its base model (layer
            sizes, scheduler, tokenizer); default: diffusers' for the kind of file (e.g. the SD1.5 hub id).
        prediction_type: override the scheduler's (`epsilon`, `v_prediction`); SD2.x 768 px models already
            say `v_prediction`, and x̂0 follows whatever the scheduler says.
        negative_init: the learned negative's start: `baseline` (the model's CFG null, which also scores the
            validation: `E("")` for SD1.x/2.x, zeros for SDXL), `empty` (`E("")`) or `zeros`; output space
            only.
        space: `output` (the paper's: the parameter is the encoder's output `(1, L, D)`) or `tokens` (the
            parameter is `num_tokens` input-token vectors per text encoder, `(N, D1 [+ D2])`, placed as a
            textual inversion is — `[BOS, v1 … vN, EOS, pad …]` — and run through the frozen encoder(s) at
            every step, SDXL's pooled vector taken from the second encoder's output as the pipeline does).
            They start as the padding token's embedding (`E("")` exactly where padding is EOS); the export
            adds `negative_ti.safetensors` that interfaces load (docs/design.md, "Negatives as tokens").
        num_tokens: N, the token vectors of `space: tokens` (at most the encoder's length − 2).
        reward: a `renegx.rewards.Reward` (in YAML: `class_path` + `init_args`).
        guidance_scale: CFG scale w in training and validation; must be > 1 (else no gradient reaches n).
        num_inference_steps: steps T of the rollout (DDIM; Euler steps of the flow schedule for SD3).
        stop_steps: K; the grad step is drawn uniformly from the last K of the T steps.
        negative_from: the learned negative acts on `[negative_from, 1)` of the schedule, the null before it,
            in training and in every picture the run draws; exported files record it and samplers apply it
            (docs/design.md, "A negative that acts late"). 0: every step, as the paper.
        loss: `mean` (−mean R) or `refl` (mean relu(τ − R) with τ = `refl_threshold`).
        max_bad_steps: a step whose reward, loss or gradient is NaN/Inf is skipped (the embedding and the
            optimizer state stay as they were; counted in `train/skipped_steps`); after this many skipped
            steps in a row the run saves a checkpoint and stops with `NonFiniteTrainingError`.

    Noise and stop indices come from `rollout_source` (a `RolloutSource`), seeded per rank, so DDP ranks draw
    different noise; its state, the data position and the skip counters are in every checkpoint (exact
    resume).

    Speed and memory (docs/benchmarks.md measures each):
        frozen_dtype: `float32` or `bfloat16` weights for the frozen UNet and VAE (the reward runs under
            autocast); the embedding and the DDIM math stay float32.
        attention, channels_last, gradient_checkpointing, compile: see `Backbone.configure_performance`;
            with `compile`, the first batch checks the compiled gradient against eager mode's.
        decode_at_reward_size: decode x̂0 at the reward's input size (`reward.image_size`) when that is
            smaller, by shrinking the latents first — cheaper, but an approximation of the full decode.
        stops_per_rollout: gradient stops per rollout (each drawn from the last K steps); above 1, one
            rollout serves them all and the loss is their mean.
        rollout_stride: the no-grad rollout takes about one UNet call per this many DDIM steps (a coarser
            sampler to the same x_t timestep; the gradient step stays on the fine schedule): 2.3× cheaper
            steps at 4 on the toy world, but a biased gradient that added defects on held-out prompts
            (docs/benchmarks.md, "Time to quality"); 1, the paper's rollout, is the default.
        reuse_rollouts: a rollout's x_t (and its prompts and stops) serve this many training steps; the
            grad step, decode and reward are recomputed with the current embedding each time, and the
            batches the data module hands in meanwhile go unused. The x_t in use are in every checkpoint
            (exact resume); one process only.
        val_every_n_steps: validate every this many optimizer steps, whatever the accumulation (needs the
            trainer's `check_val_every_n_epoch: null`); unset, the trainer's `val_check_interval` (counted in
            micro-batches) decides.

    Trainer precision: `32-true` or `bf16-mixed` (with `frozen_dtype: bfloat16` the frozen weights are
    already bf16, so autocast has nothing to re-cast); `bf16-true`, `16-true` and `16-mixed` are refused.
    """

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
        self.recipe = checked_recipe(self.hparams)
        if isinstance(model, Backbone):
            backbone = model
        else:
            backbone = load_backbone(model, clip_skip, prediction_type, config=model_config)
        self.hparams["model"] = backbone.name if isinstance(model, Backbone) else model
        self.backbone: Backbone = backbone.configure_performance(
            frozen_dtype=frozen_dtype,
            attention=attention,
            channels_last=channels_last,
            gradient_checkpointing=gradient_checkpointing,
            compile=compile,
        )
        self.reward = reward
        if decode_at_reward_size:
            self.recipe = replace(self.recipe, decode_size=getattr(reward, "image_size", None))
        self._schedule = self.backbone.schedule(num_inference_steps)
        null = self.backbone.null_embedding()
        self.register_buffer("null_embeds", null, persistent=False)
        initial = {
            "baseline": null,
            "empty": self.backbone.encode_prompts([""]),
            "zeros": torch.zeros_like(null),
        }
        if space == "tokens":
            try:
                vectors = padding_vectors(self.backbone, num_tokens)
            except TextualInversionError as err:
                raise TrainingConfigError(f"model.space tokens: {err}") from None
            self.negative_tokens = nn.Parameter(torch.cat(vectors, dim=1))
        else:
            self.negative_embeds = nn.Parameter(initial[negative_init].clone())
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
        widths = [
            encoder.get_input_embeddings().embedding_dim for _, encoder in token_encoders(self.backbone)
        ]
        return list(self.negative_tokens.split(widths, dim=1))

    def learned_negative(self) -> torch.Tensor:
        """The learned negative as the UNet takes it, `(1, L, D)` (SDXL packed `(1, L + 1, D)`); in token
        space the encoder's output over the vectors, with the graph back to them when grad is enabled."""
        if self.tokens:
            return encode_vectors(self.backbone, self.token_vectors())
        return self.negative_embeds

    @property
    def schedule(self) -> DDIMSchedule | FlowSchedule:
        """The schedule (DDIM, or Euler for a flow model), its tensors on the module's device (moved once
        after each `.to()`)."""
        if self._schedule.device != self.device:
            self._schedule = self._schedule.to(self.device)
        return self._schedule

    def setup(self, stage: str) -> None:
        if self.hparams.reuse_rollouts > 1:
            check_processes(self.hparams.reuse_rollouts, self.trainer.world_size)
        check_precision(str(self.trainer.precision))

    def on_train_start(self) -> None:
        every = self.hparams.val_every_n_steps
        if every is None:
            return
        if self.trainer.check_val_every_n_epoch is not None:
            raise TrainingConfigError(
                f"model.val_every_n_steps {every} needs trainer.check_val_every_n_epoch: null "
                f"(got {self.trainer.check_val_every_n_epoch}): it counts steps across epochs"
            )
        # Lightning counts its validation interval in micro-batches; set after it reads val_check_interval.
        self.trainer.val_check_batch = every * self.trainer.accumulate_grad_batches

    # -- checkpoint content ---------------------------------------------------------------------------------
    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        return {prefix + self.trainable_name: self.trainable if keep_vars else self.trainable.detach()}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Add what exact resume needs beyond Lightning's state: every rank's noise RNG and the skip counters.

        Called on every rank (Lightning writes the file from rank 0), so the ranks' RNG states are gathered.
        """
        state = self.rollout_source.noise_generator(self.global_rank).get_state()
        states = self.all_gather(state.to(self.device)).cpu() if self.trainer.world_size > 1 else state[None]
        checkpoint["renegx"] = {"noise_rng": states, "guard": self.guard.state_dict()}
        if self.rollout_source.reused is not None:
            checkpoint["renegx"]["reused_rollout"] = self.rollout_source.reused.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        where = f"checkpoint {self.trainer.ckpt_path}" if self._trainer is not None else "checkpoint"
        name, held = self.trainable_name, checkpoint.get("state_dict", {})
        embeds = held.get(name)
        if embeds is None:
            other = next((key for key in ("negative_embeds", "negative_tokens") if key in held), None)
            if other is not None:
                raise TrainingConfigError(
                    f"{where} holds {other}, but this run learns {name} (model.space {self.hparams.space})"
                )
            raise TrainingConfigError(f"{where} holds no {name}: not a renegx training checkpoint")
        if embeds.shape != self.trainable.shape:
            raise TrainingConfigError(
                f"{where} holds {'token vectors' if self.tokens else 'a negative embedding'} of shape "
                f"{tuple(embeds.shape)}, but model "
                f"'{self.hparams.model}' needs {tuple(self.trainable.shape)}"
            )
        extra = checkpoint.get("renegx")
        if extra is None:
            return
        self.guard.load_state_dict(extra["guard"])
        world_size, step = (
            self.trainer.world_size if self._trainer is not None else 1,
            checkpoint.get("global_step", 0),
        )
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

    def step_loss(
        self, prompts: list[str], latents: torch.Tensor, stops: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The training loss for noise `latents` and ascending `stops`, and the rewards `(len(stops) · B,)`
        (`renegx.train.step.step_loss` with this module's backbone, reward and recipe)."""
        return step_loss(
            self.backbone,
            self.reward,
            self.schedule,
            self.recipe,
            prompts,
            latents,
            stops,
            self.learned_negative(),
        )

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        if not self._compiled_gradient_checked:
            check_compiled_gradient(self, batch["prompts"])
            self._compiled_gradient_checked = True

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # On an accelerator the reward's value checks would wait for the device at every call: they are left
        # to the gradient, which a non-finite reward turns non-finite, and to the guard that then skips it.
        on_host = self.device.type == "cpu"
        try:
            with contextlib.nullcontext() if on_host else deferred_value_checks():
                negative = self.learned_negative()
                source, rank = self.rollout_source, self.global_rank
                rolled = source.rollouts_for(self.schedule, batch["prompts"], negative.detach(), rank)
                prompts, embeds = rolled.prompts, self.backbone.encode_prompts(rolled.prompts)
                loss, rewards = loss_at_stops(
                    self.backbone,
                    self.reward,
                    self.schedule,
                    self.recipe,
                    prompts,
                    rolled.x_ts,
                    rolled.stops,
                    negative,
                    embeds,
                )
        except NonFiniteRewardError:
            # Every rank must still run backward (DDP all-reduces there): a NaN gradient skips the update.
            return poisoned_loss(self.trainable)
        if not on_host:
            loss = poisoned_if_nonfinite(loss, rewards, self.trainable)
        components = getattr(self.reward, "last_components", None) or {}
        self.log_dict(
            {
                "train/loss": loss,
                "train/reward_mean": rewards.mean(),
                "train/reward_std": rewards.std() if len(rewards) > 1 else torch.zeros(()),
                "train/embedding_norm": self.trainable.detach().norm(),
            },
            prog_bar=True,
            batch_size=len(prompts),
        )
        if components:
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
        self.log_dict(
            {
                "val/reward": learned.mean(),
                "val/reward_null": null.mean(),
                "val/reward_gain": (learned - null).mean(),
            },
            prog_bar=True,
            batch_size=len(prompts),
            sync_dist=True,  # each rank scores its share of the validation prompts
        )

    # -- optimisation ---------------------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(
            [self.trainable],
            lr=self.hparams.lr,
            betas=tuple(self.hparams.betas),
            weight_decay=self.hparams.weight_decay,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = self.hparams.warmup_steps
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cosine_with_warmup(step, warmup, total)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def export_metadata(self) -> dict[str, str]:
        """What an exported file records about how it was made."""
        return {
            "base_model": self.backbone.name,
            **self.backbone.text_encoder_metadata(),
            "reward": self.reward.name,
            "guidance_scale": str(self.hparams.guidance_scale),
            "num_inference_steps": str(self.hparams.num_inference_steps),
            "stop_steps": str(self.hparams.stop_steps),
            **({"negative_from": str(self.hparams.negative_from)} if self.hparams.negative_from else {}),
            **({"model_config": self.hparams.model_config} if self.hparams.model_config else {}),
            "negative_init": self.hparams.negative_init,
            **({"trained_in": "tokens", "num_tokens": str(self.hparams.num_tokens)} if self.tokens else {}),
            "train_steps": str(self.global_step),
        }
