"""RewardMixture: the weighted, optionally standardised sum, its logged components, and its errors."""

from __future__ import annotations

import pytest
import torch

from renegx.rewards import ClipScore, Reward, RewardError, RewardMixture


class Constant(Reward):
    """Scores `value + mean(image)` so the gradient to the image is known."""

    name = "constant"

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def score(self, images, prompts):
        return self.value + images.mean(dim=(1, 2, 3))


def test_weighted_standardised_sum_and_components():
    mixture = RewardMixture([Constant(1.0), Constant(5.0)], weights=[2.0, 0.5], stats=[None, (4.0, 2.0)])
    x = torch.full((2, 3, 8, 8), 0.5, requires_grad=True)
    total = mixture(x, ["a", "b"])
    torch.testing.assert_close(total, torch.full((2,), 2 * 1.5 + 0.5 * (5.5 - 4.0) / 2.0))
    assert list(mixture.last_components) == ["constant", "constant_2"]
    torch.testing.assert_close(mixture.last_components["constant_2"], torch.full((2,), 5.5))
    assert not mixture.last_components["constant"].requires_grad
    total.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, (2 + 0.5 / 2) / (3 * 8 * 8)))


def test_default_weights_are_one():
    mixture = RewardMixture([Constant(1.0), Constant(2.0)])
    torch.testing.assert_close(mixture(torch.zeros(1, 3, 4, 4), ["a"]), torch.tensor([3.0]))


def test_component_nan_is_raised_with_its_name(monkeypatch):
    clip = ClipScore(model="tiny")
    mixture = RewardMixture([Constant(0.0), clip])
    monkeypatch.setattr(clip, "score", lambda images, prompts: torch.tensor([float("nan")]))
    with pytest.raises(RewardError, match="clip reward is NaN/Inf for 1 of 1 images"):
        mixture(torch.rand(1, 3, 32, 32), ["a"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rewards": []}, "needs at least one reward"),
        ({"weights": [1.0]}, "got 1 weights for 2 rewards"),
        ({"stats": [None]}, "got 1 stats for 2 rewards"),
        ({"stats": [None, (0.0, 0.0)]}, r"stats\[1\] must be \(mean, std\) with std > 0"),
    ],
)
def test_bad_mixtures(kwargs, message):
    with pytest.raises(RewardError, match=message):
        RewardMixture(**{"rewards": [Constant(0.0), Constant(1.0)], **kwargs})
