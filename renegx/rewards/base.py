"""The reward interface: `reward(images, prompts) -> (B,)` scores, differentiable in the images.

Every backend subclasses `Reward` and implements `score`; `forward` checks what goes in and what comes out,
so a bad batch or a NaN reward fails at once with a one-line message instead of poisoning the embedding.
Inside `deferred_value_checks()` (the training step on an accelerator) the checks that read tensor values
back to the host are left out, so that a call never waits for the device; the caller then handles a
non-finite reward itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch
from torch import Tensor

from renegx.errors import RenegxError

RANGE_TOLERANCE = 1e-4
_DEFERRED: ContextVar[bool] = ContextVar("renegx_reward_checks_deferred", default=False)


@contextlib.contextmanager
def deferred_value_checks() -> Iterator[None]:
    """Within: `Reward.forward` checks shapes and types only, never values (no host sync); a NaN/Inf image or
    score is the caller's to catch (e.g. by turning it into a non-finite gradient that the guard skips)."""
    token = _DEFERRED.set(True)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


class RewardError(RenegxError):
    """A bad reward input, configuration or model file; the message is one line."""


class NonFiniteRewardError(RewardError):
    """The images or the reward contain NaN/Inf."""


class Reward(torch.nn.Module):
    """A frozen, differentiable image-text reward.

    `reward(images, prompts)`: images `(B, 3, H, W)` float in [0, 1], prompts a list of B strings
    → scores `(B,)` float32, differentiable in `images`. Parameters never require grad and the module stays
    in eval mode (dropout off) even when a parent calls `.train()`.
    """

    name: str = "reward"

    def forward(self, images: Tensor, prompts: list[str]) -> Tensor:
        self._check_inputs(images, prompts)
        scores = self.score(images, prompts)
        batch = images.shape[0]
        if tuple(scores.shape) != (batch,):
            raise RewardError(f"{self.name} reward returned shape {tuple(scores.shape)}, expected ({batch},)")
        if _DEFERRED.get():
            return scores.float()
        bad = int((~torch.isfinite(scores)).sum())
        if bad:
            raise NonFiniteRewardError(f"{self.name} reward is NaN/Inf for {bad} of {batch} images")
        return scores.float()

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        """Scores `(B,)` for validated `images` `(B, 3, H, W)` in [0, 1] and B prompts."""
        raise NotImplementedError

    def freeze(self) -> Reward:
        """No parameter requires grad; eval mode. Subclasses call this at the end of `__init__`."""
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> Reward:
        """Always eval: a reward model's dropout/batch-norm must not change under a training loop."""
        return super().train(False)

    def _check_inputs(self, images: Tensor, prompts: list[str]) -> None:
        if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise RewardError(f"expected images (B, 3, H, W), got shape {shape}")
        if not images.is_floating_point():
            raise RewardError(f"images must be a floating-point tensor in [0, 1], got dtype {images.dtype}")
        if isinstance(prompts, str):
            raise RewardError("prompts must be a list of strings, got a single str")
        if len(prompts) == 0:
            raise RewardError("prompts must not be empty")
        batch = images.shape[0]
        if len(prompts) != batch:
            raise RewardError(f"got {len(prompts)} prompts for {batch} images; expected one per image")
        if _DEFERRED.get():
            return
        with torch.no_grad():
            bad = int((~torch.isfinite(images)).flatten(1).any(1).sum())
            if bad:
                raise NonFiniteRewardError(f"{bad} of {batch} images contain NaN/Inf values")
            low, high = (value.item() for value in torch.aminmax(images))
            if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
                raise RewardError(f"images must be in [0, 1]; got min {low:.4g}, max {high:.4g}")
