"""The training module's settings, checked before anything is built: one-line errors, no side effects."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from renegx.models.backbone import ATTENTION
from renegx.train.step import StepRecipe, TrainingConfigError

# The recipe's fields that are settings of their own (the decode size follows the reward's input size).
RECIPE_SETTINGS = tuple(field.name for field in fields(StepRecipe) if field.name != "decode_size")
NEGATIVE_INITS = ("baseline", "empty", "zeros")
SPACES = ("output", "tokens")  # where the negative is learned: the text encoder's output, or its input tokens
# Trainer precisions that keep a float32 (or wider) embedding and never skip steps on their own.
PRECISIONS = ("32-true", "64-true", "bf16-mixed")
REFUSED_PRECISIONS = {
    "bf16-true": "it turns the learned embedding itself into bfloat16 (no float32 master copy)",
    "16-true": "it turns the learned embedding itself into float16 (no float32 master copy)",
    "16-mixed": "GradScaler's overflow steps would count as non-finite skips and stop the run",
}


def checked_recipe(settings: Mapping[str, Any]) -> StepRecipe:
    """The step recipe of `ReNegModule`'s `settings` (its init arguments by name), once every one of them is
    checked; `TrainingConfigError` with one line naming the first that is wrong."""
    steps = settings["num_inference_steps"]
    if steps < 1:
        raise TrainingConfigError(f"num_inference_steps must be >= 1, got {steps}")
    recipe = StepRecipe(**{name: settings[name] for name in RECIPE_SETTINGS}).check(steps)
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
