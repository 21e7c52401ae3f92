"""Differentiable image-text rewards behind one interface (see `Reward`)."""

from renegx.rewards.base import NonFiniteRewardError, Reward, RewardError
from renegx.rewards.clip_score import ClipScore

REWARDS: dict[str, type[Reward]] = {"clip": ClipScore}


def build_reward(name: str, **kwargs) -> Reward:
    """The reward registered as `name`, built with `kwargs` (e.g. `build_reward("clip", model="tiny")`)."""
    if name not in REWARDS:
        raise RewardError(f"unknown reward '{name}'; known: {', '.join(sorted(REWARDS))}")
    return REWARDS[name](**kwargs)


__all__ = ["REWARDS", "ClipScore", "NonFiniteRewardError", "Reward", "RewardError", "build_reward"]
