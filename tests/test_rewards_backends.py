"""What every reward backend promises, checked on each tiny model: the interface, gradients, frozen weights,
bad inputs, NaN scores, bf16 autocast, building by name and from YAML."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from renegx.rewards import (
    REWARDS,
    HPSv2,
    ImageReward,
    LaionAesthetic,
    NonFiniteRewardError,
    PickScore,
    Reward,
    RewardError,
    RewardMixture,
    build_reward,
)

PROMPTS = ["a red circle", "a blue square on grass", "a red circle"]


def tiny_mixture() -> RewardMixture:
    return RewardMixture(
        [HPSv2(model="tiny"), PickScore(model="tiny")], weights=[1.0, 0.1], stats=[(0, 0.5), None]
    )


BUILDERS = {
    "hpsv2": lambda: HPSv2(model="tiny"),
    "imagereward": lambda: ImageReward(model="tiny"),
    "pickscore": lambda: PickScore(model="tiny"),
    "aesthetic": lambda: LaionAesthetic(model="tiny"),
    "mix": tiny_mixture,
}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def reward(request) -> Reward:
    return BUILDERS[request.param]()


def images(batch: int = 3, height: int = 40, width: int = 56, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(batch, 3, 4, 5, generator=generator)
    return F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)


def test_scores_are_float32_per_image_and_deterministic(reward):
    x = images()
    first, second = reward(x, PROMPTS), reward(x, PROMPTS)
    assert first.shape == (3,) and first.dtype == torch.float32
    torch.testing.assert_close(first, second)
    assert not torch.allclose(first[0], first[1])  # different images score differently


def test_gradients_reach_the_images_and_no_reward_parameter(reward):
    x = images().requires_grad_(True)
    (-reward(x, PROMPTS).mean()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    assert all(not p.requires_grad and p.grad is None for p in reward.parameters())


def test_stays_in_eval_mode(reward):
    torch.nn.Sequential(reward).train()
    assert not any(module.training for module in reward.modules())


def test_bf16_autocast_runs_and_stays_close(reward):
    x = images()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = reward(x, PROMPTS)
    high = reward(x, PROMPTS)
    assert low.dtype == torch.float32
    assert (low - high).abs().max() <= 0.05 * high.abs().max() + 0.05


@pytest.mark.parametrize(
    ("bad_images", "prompts", "message"),
    [
        (torch.rand(2, 1, 32, 32), ["a", "b"], "expected images (B, 3, H, W)"),
        (torch.rand(2, 3, 32, 32) * 2, ["a", "b"], "images must be in [0, 1]"),
        (torch.rand(2, 3, 32, 32), [], "prompts must not be empty"),
    ],
    ids=["1-channel", "above-1", "no-prompts"],
)
def test_bad_inputs_raise_one_line_errors(reward, bad_images, prompts, message):
    with pytest.raises(RewardError) as error:
        reward(bad_images, prompts)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_nan_score_is_raised_not_propagated(reward, monkeypatch):
    monkeypatch.setattr(reward, "score", lambda images, prompts: torch.full((len(prompts),), float("nan")))
    with pytest.raises(NonFiniteRewardError, match=f"{reward.name} reward is NaN/Inf for 3 of 3 images"):
        reward(images(), PROMPTS)


def test_registry_builds_each_backend_and_lists_the_known_ones():
    assert {"hpsv2", "hpsv3", "imagereward", "pickscore", "aesthetic", "clip", "mix"} <= set(REWARDS)
    assert isinstance(build_reward("hpsv2", model="tiny"), HPSv2)
    with pytest.raises(
        RewardError, match="unknown reward 'hps'; known: aesthetic, clip, hpsv2, hpsv3, imagereward, mix"
    ):
        build_reward("hps")


def test_every_backend_builds_from_a_class_path():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--reward", type=Reward)
    config = parser.parse_object(
        {
            "reward": {
                "class_path": "renegx.rewards.RewardMixture",
                "init_args": {
                    "rewards": [
                        {"class_path": f"renegx.rewards.{name}", "init_args": {"model": "tiny"}}
                        for name in ("HPSv2", "ImageReward", "PickScore", "LaionAesthetic", "ClipScore")
                    ],
                    "weights": [1, 2, 3, 4, 5],
                    "stats": [None, [0.0, 2.0], None, None, None],
                },
            }
        }
    )
    built = parser.instantiate(config).reward
    assert [r.name for r in built.rewards] == ["hpsv2", "imagereward", "pickscore", "aesthetic", "clip"]
    assert built.weights == [1, 2, 3, 4, 5] and built.stats[1] == (0.0, 2.0)
