"""renegx.toyworld.evaluation: every negative drawn from one noise per (prompt, seed), judged and read."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from renegx.toyworld.evaluation import JUDGES, Evaluation


@pytest.fixture(scope="module")
def evaluation() -> Evaluation:
    from renegx.rewards import ToyPreference
    from renegx.train.module import ReNegModule

    module = ReNegModule(model="toy", reward=ToyPreference(), num_inference_steps=4, stop_steps=2)
    return Evaluation(module, ["a red circle", "a small blue square", "a green triangle"], [5, 6])


def test_pictures_are_prompt_major_and_each_prompt_draws_its_own_noise(evaluation):
    assert evaluation.texts == ["a red circle"] * 2 + ["a small blue square"] * 2 + ["a green triangle"] * 2
    assert evaluation.clusters.tolist() == [0, 0, 1, 1, 2, 2]
    noises = [seed for _, _, seed in evaluation.pairs]
    assert len(set(noises)) == len(noises)  # (prompt, seed) → its own noise: no two pictures share it


def test_the_same_negative_draws_the_same_pictures_and_compares_equal_to_itself(evaluation):
    null = evaluation.module.null_embeds
    first, again = evaluation.draw(null), evaluation.draw(null)
    assert first.shape == (6, 3, 32, 32) and 0 <= first.min() and first.max() <= 1
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    readings = evaluation.measure(first)
    measures = ("defective", "adherence", *JUDGES)
    assert all(len(readings[m]) == 6 and np.isfinite(readings[m]).all() for m in measures)
    row = evaluation.compare(readings, readings)
    for measure in measures:
        assert row[f"{measure}_minus_null"]["value"] == 0
    assert row["toy-pref"] == pytest.approx(readings["toy-pref"].mean(), abs=1e-4)


def test_another_negative_changes_the_pictures_and_the_paired_difference_says_so(evaluation):
    null = evaluation.module.null_embeds
    shifted = null + 2.0 * torch.randn(null.shape, generator=torch.Generator().manual_seed(0))
    base, other = evaluation.draw(null), evaluation.draw(shifted)
    assert not torch.allclose(base, other)
    row = evaluation.compare(evaluation.measure(base), evaluation.measure(other))
    value, low, high = (row["toy-pref_minus_null"][k] for k in ("value", "low", "high"))
    assert low <= value <= high and value != 0
