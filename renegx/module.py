"""ReNegModule: learn one negative embedding by reward feedback (orchestration only; math in guidance.py).

Training step (DESIGN §3): draw x_T and a stop index in the last K of T DDIM steps → no-grad CFG rollout to
x_t with the current negative → one step with grad through the negative branch only → x̂0 → VAE decode →
reward → loss = −mean(reward). The negative embedding is the only trainable parameter.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn

from renegx.backbone import Backbone, decode_latents, load_backbone
from renegx.errors import RenegxError
from renegx.guidance import ddim_schedule, one_step_x0, rollout_to
from renegx.rewards import Reward

LOSSES = ("mean", "refl")


class TrainingConfigError(RenegxError):
    pass


def reward_loss(rewards: torch.Tensor, loss: str, refl_threshold: float) -> torch.Tensor:
    """`−mean(R)`, or ReFL's hinge `mean(relu(τ − R))` that stops pushing rewards already above τ."""
    if loss == "mean":
        return -rewards.mean()
    return torch.relu(refl_threshold - rewards).mean()


def cosine_with_warmup(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warmup to 1, then cosine decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class ReNegModule(L.LightningModule):
    """Learns `negative_embeds` `(1, L, D)`, initialised to `E("")`, against a frozen backbone and reward.

    Args:
        model: `tiny`, a local diffusers folder or a hub id (SD1.x/2.x).
        reward: a `renegx.rewards.Reward` (in YAML: `class_path` + `init_args`).
        guidance_scale: CFG scale w in training and validation; must be > 1 (else no gradient reaches n).
        num_inference_steps: DDIM steps T of the rollout.
        stop_steps: K; the grad step is drawn uniformly from the last K of the T steps.
        loss: `mean` (−mean R) or `refl` (mean relu(τ − R) with τ = `refl_threshold`).
    """

    def __init__(
        self,
        reward: Reward,
        model: str = "tiny",
        clip_skip: int | None = None,
        guidance_scale: float = 7.5,
        num_inference_steps: int = 30,
        stop_steps: int = 10,
        loss: str = "mean",
        refl_threshold: float = 2.0,
        lr: float = 5e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        val_seed: int = 1234,
    ):
        super().__init__()
        if guidance_scale <= 1:
            raise TrainingConfigError(
                f"guidance_scale must be > 1 for training (got {guidance_scale}): without CFG the negative "
                "embedding gets no gradient"
            )
        if num_inference_steps < 1:
            raise TrainingConfigError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if not 1 <= stop_steps <= num_inference_steps:
            raise TrainingConfigError(
                f"stop_steps must be in [1, num_inference_steps={num_inference_steps}], got {stop_steps}"
            )
        if loss not in LOSSES:
            raise TrainingConfigError(f"unknown loss '{loss}'; known: {', '.join(LOSSES)}")
        self.save_hyperparameters(ignore=["reward"])
        self.backbone: Backbone = load_backbone(model, clip_skip=clip_skip)
        self.reward = reward
        self.schedule = ddim_schedule(self.backbone.scheduler, num_inference_steps)
        null = self.backbone.null_embedding()
        self.register_buffer("null_embeds", null, persistent=False)
        self.negative_embeds = nn.Parameter(null.clone())
        self._null_val_rewards: dict[int, torch.Tensor] = {}
        # Checkpoints hold the embedding and training state only; the frozen models are rebuilt from config.
        self.strict_loading = False

    # -- checkpoint content ---------------------------------------------------------------------------------
    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        return {
            prefix + "negative_embeds": self.negative_embeds if keep_vars else self.negative_embeds.detach()
        }

    # -- the step -------------------------------------------------------------------------------------------
    def _initial_latents(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        shape = (batch_size, *self.backbone.latent_shape)
        noise = torch.randn(shape, generator=generator, device="cpu" if generator else self.device)
        return (noise * self.backbone.scheduler.init_noise_sigma).to(self.device)

    def draw_stop_index(self) -> int:
        """Uniform over the last K of the T steps (indices T−K … T−1)."""
        first = len(self.schedule) - self.hparams.stop_steps
        return first + int(torch.randint(self.hparams.stop_steps, ()).item())

    def predicted_images(self, prompts: list[str], latents: torch.Tensor, stop_index: int) -> torch.Tensor:
        """x̂0 at the stop index, decoded with grad: images `(B, 3, H, W)` in [0, 1]."""
        prompt_embeds = self.backbone.encode_prompts(prompts)
        x_t = rollout_to(
            self.backbone.unet,
            self.schedule,
            latents,
            self.negative_embeds.detach(),
            prompt_embeds,
            self.hparams.guidance_scale,
            stop_index,
        )
        x0 = one_step_x0(
            self.backbone.unet,
            self.schedule,
            x_t,
            stop_index,
            self.negative_embeds,
            prompt_embeds,
            self.hparams.guidance_scale,
        )
        return decode_latents(self.backbone.vae, x0)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        prompts = batch["prompts"]
        images = self.predicted_images(prompts, self._initial_latents(len(prompts)), self.draw_stop_index())
        rewards = self.reward(images, prompts)
        loss = reward_loss(rewards, self.hparams.loss, self.hparams.refl_threshold)
        self.log_dict(
            {
                "train/loss": loss,
                "train/reward_mean": rewards.mean(),
                "train/reward_std": rewards.std() if len(rewards) > 1 else torch.zeros(()),
                "train/embedding_norm": self.negative_embeds.detach().norm(),
            },
            prog_bar=True,
            batch_size=len(prompts),
        )
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        grad = self.negative_embeds.grad
        if grad is not None:
            self.log("train/grad_norm", grad.norm(), batch_size=1)
        self.log("train/lr", optimizer.param_groups[0]["lr"], batch_size=1)

    # -- validation: learned vs null on fixed prompts and fixed noise ---------------------------------------
    @torch.no_grad()
    def sample_images(self, prompts: list[str], negative: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        """Full guided DDIM sampling from per-seed noise; images `(B, 3, H, W)` in [0, 1]."""
        latents = torch.cat([self._initial_latents(1, torch.Generator().manual_seed(s)) for s in seeds])
        prompt_embeds = self.backbone.encode_prompts(prompts)
        final = rollout_to(
            self.backbone.unet,
            self.schedule,
            latents,
            negative,
            prompt_embeds,
            self.hparams.guidance_scale,
            len(self.schedule),
        )
        return self.backbone.decode_to_pixels(final)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        prompts, indices = batch["prompts"], batch["indices"].tolist()
        seeds = [self.hparams.val_seed + i for i in indices]
        learned = self.reward(self.sample_images(prompts, self.negative_embeds, seeds), prompts)
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
        )

    # -- optimisation ---------------------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(
            [self.negative_embeds],
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
            "train_steps": str(self.global_step),
        }
