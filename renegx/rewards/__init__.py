"""Differentiable image-text rewards behind one interface (see `Reward`)."""

from renegx.rewards.aesthetic import LaionAesthetic
from renegx.rewards.base import NonFiniteRewardError, Reward, RewardError
from renegx.rewards.clip_score import ClipScore
from renegx.rewards.hpsv2 import HPSv2
from renegx.rewards.hpsv3 import HPSv3
from renegx.rewards.image_reward import ImageReward
from renegx.rewards.mixture import RewardMixture
from renegx.rewards.pickscore import PickScore
from renegx.rewards.toy import ToyIndependentJudge, ToyPreference

REWARDS: dict[str, type[Reward]] = {
    "aesthetic": LaionAesthetic,
    "clip": ClipScore,
    "hpsv2": HPSv2,
    "hpsv3": HPSv3,
    "imagereward": ImageReward,
    "mix": RewardMixture,
    "pickscore": PickScore,
    "toy-independent": ToyIndependentJudge,
    "toy-pref": ToyPreference,
}


def build_reward(name: str, **kwargs) -> Reward:
    """The reward registered as `name`, built with `kwargs` (e.g. `build_reward("clip", model="tiny")`)."""
    if name not in REWARDS:
        raise RewardError(f"unknown reward '{name}'; known: {', '.join(sorted(REWARDS))}")
    return REWARDS[name](**kwargs)


__all__ = [
    "REWARDS",
    "ClipScore",
    "HPSv2",
    "HPSv3",
    "ImageReward",
    "LaionAesthetic",
    "NonFiniteRewardError",
    "PickScore",
    "Reward",
    "RewardError",
    "RewardMixture",
    "ToyIndependentJudge",
    "ToyPreference",
    "build_reward",
]
