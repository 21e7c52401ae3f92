"""The training module's settings: their help, their checks (pure functions, one-line errors, run before
anything is built), the start of the negative they choose and what an exported file records of them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import torch

from renegx.models.backbone import ATTENTION, Backbone
from renegx.negatives.textual_inversion import TextualInversionError, padding_vectors
from renegx.train.step import StepRecipe, TrainingConfigError

# `ReNegModule`'s settings as its docstring gives them (Google style, indented as in the class body), read
# by LightningCLI for `--help`.
HELP = """

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
        null_pull: λ ≥ 0; the loss adds `λ · mean((n − n_null)²)`, a pull of the learned negative towards
            the model's CFG null that bounds how far the reward takes it (logged: `train/null_pull`, and
            `train/null_distance` in every run). 0: none, as the paper.
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

# The recipe's fields that are settings of their own (the decode size follows the reward's input size).
RECIPE_SETTINGS = tuple(field.name for field in fields(StepRecipe) if field.name != "decode_size")
# The settings that `Backbone.configure_performance` takes, by the same names.
PERFORMANCE = ("frozen_dtype", "attention", "channels_last", "gradient_checkpointing", "compile")
NEGATIVE_INITS = ("baseline", "empty", "zeros")
SPACES = ("output", "tokens")  # where the negative is learned: the text encoder's output, or its input tokens
# Trainer precisions that keep a float32 (or wider) embedding and never skip steps on their own.
PRECISIONS = ("32-true", "64-true", "bf16-mixed")
REFUSED_PRECISIONS = {
    "bf16-true": "it turns the learned embedding itself into bfloat16 (no float32 master copy)",
    "16-true": "it turns the learned embedding itself into float16 (no float32 master copy)",
    "16-mixed": "GradScaler's overflow steps would count as non-finite skips and stop the run",
}


def checked_recipe(settings: Mapping[str, Any], reward_size: int | None = None) -> StepRecipe:
    """The step recipe of `ReNegModule`'s `settings` (its init arguments by name), once every one of them is
    checked; `TrainingConfigError` with one line naming the first that is wrong. `reward_size`: the reward's
    input size, where x̂0 is decoded with `decode_at_reward_size`."""
    steps = settings["num_inference_steps"]
    if steps < 1:
        raise TrainingConfigError(f"num_inference_steps must be >= 1, got {steps}")
    decode_size = reward_size if settings["decode_at_reward_size"] else None
    recipe = StepRecipe(**{name: settings[name] for name in RECIPE_SETTINGS}, decode_size=decode_size)
    recipe.check(steps)
    if not 0 < settings["lr"] < math.inf:
        raise TrainingConfigError(f"lr must be a finite number > 0, got {settings['lr']}")
    for name in ("max_bad_steps", "reuse_rollouts"):
        if settings[name] < 1:
            raise TrainingConfigError(f"{name} must be >= 1, got {settings[name]}")
    if settings["attention"] not in ATTENTION:
        raise TrainingConfigError(
            f"unknown attention '{settings['attention']}'; known: {', '.join(ATTENTION)}"
        )
    every = settings["val_every_n_steps"]
    if every is not None and every < 1:
        raise TrainingConfigError(f"val_every_n_steps must be >= 1, got {every}")
    init, space = settings["negative_init"], settings["space"]
    if init not in NEGATIVE_INITS:
        raise TrainingConfigError(f"unknown negative_init '{init}'; known: {', '.join(NEGATIVE_INITS)}")
    if space not in SPACES:
        raise TrainingConfigError(f"unknown model.space '{space}'; known: {', '.join(SPACES)}")
    if space == "tokens" and init != "baseline":
        raise TrainingConfigError(
            f"model.negative_init {init} is for model.space output; token vectors start as the padding "
            "token's embedding"
        )
    return recipe


def check_validation_interval(val_every_n_steps: int, check_val_every_n_epoch: int | None) -> None:
    """Validating every n optimizer steps counts steps across epochs: the trainer must not count epochs."""
    if check_val_every_n_epoch is not None:
        raise TrainingConfigError(
            f"model.val_every_n_steps {val_every_n_steps} needs trainer.check_val_every_n_epoch: null "
            f"(got {check_val_every_n_epoch}): it counts steps across epochs"
        )


def check_processes(reuse_rollouts: int, world_size: int) -> None:
    """Reused rollouts need one process: every rank's reused x_t would have to be in the checkpoint."""
    if reuse_rollouts > 1 and world_size > 1:
        raise TrainingConfigError(
            f"model.reuse_rollouts {reuse_rollouts} needs a single process (got {world_size}): every rank's "
            "reused x_t would have to be in the checkpoint"
        )


def check_precision(precision: str) -> None:
    """The trainer's precision must keep a float32 (or wider) embedding and never skip steps on its own."""
    if precision in REFUSED_PRECISIONS:
        raise TrainingConfigError(
            f"trainer.precision {precision} is not supported: {REFUSED_PRECISIONS[precision]}; "
            f"use one of {', '.join(PRECISIONS)}"
        )
    if precision not in PRECISIONS:
        raise TrainingConfigError(
            f"trainer.precision {precision} is not supported; use one of {', '.join(PRECISIONS)}"
        )


def initial_negative(
    backbone: Backbone, null: torch.Tensor, negative_init: str, space: str, num_tokens: int
) -> torch.Tensor:
    """The learned parameter's start: in token space `num_tokens` padding-token vectors per text encoder
    `(N, D1 [+ D2])`; else the model's CFG `null` (`baseline`), `E("")` (`empty`) or zeros, `(1, L, D)`."""
    if space == "tokens":
        try:
            return torch.cat(padding_vectors(backbone, num_tokens), dim=1)
        except TextualInversionError as err:
            raise TrainingConfigError(f"model.space tokens: {err}") from None
    if negative_init == "empty":
        return backbone.encode_prompts([""]).clone()
    return torch.zeros_like(null) if negative_init == "zeros" else null.clone()


def recorded_settings(settings: Mapping[str, Any]) -> dict[str, str]:
    """The settings an exported file records about how it was made, as metadata strings."""
    tokens = settings["space"] == "tokens"
    return {
        "guidance_scale": str(settings["guidance_scale"]),
        "num_inference_steps": str(settings["num_inference_steps"]),
        "stop_steps": str(settings["stop_steps"]),
        **({"negative_from": str(settings["negative_from"])} if settings["negative_from"] else {}),
        **({"null_pull": str(settings["null_pull"])} if settings.get("null_pull") else {}),
        **({"model_config": settings["model_config"]} if settings["model_config"] else {}),
        "negative_init": settings["negative_init"],
        **({"trained_in": "tokens", "num_tokens": str(settings["num_tokens"])} if tokens else {}),
    }
