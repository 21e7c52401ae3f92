"""bench/time_to_quality.py: how it decides the speed-up, what each estimator runs, its FLOP arithmetic."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import time_to_quality as ttq  # noqa: E402

PICTURES = 40


def _readings(pref: float, defective_share: float, seed: int) -> dict[str, np.ndarray]:
    """Per-picture readings with a given mean judge score and defective share (adherence all 1)."""
    rng = np.random.default_rng(seed)
    defective = np.zeros(PICTURES)
    defective[: round(defective_share * PICTURES)] = 1
    return {
        "toy-pref": pref + 0.001 * rng.standard_normal(PICTURES),
        "toy-independent": np.full(PICTURES, pref * 10),
        "defective": defective,
        "adherence": np.ones(PICTURES),
    }


def _run(name: str, points: list[tuple[float, float, float]]) -> dict:
    return {
        "estimator": name,
        "seed": 0,
        "steps": 10,
        "points": [
            {"step": k, "cpu_s": cpu_s, "readings": _readings(pref, defective, k)}
            for k, (cpu_s, pref, defective) in enumerate(points)
        ],
    }


def test_speedup_is_the_paper_time_over_the_first_point_reaching_its_gain_with_truth_not_worse():
    null = {"readings": _readings(0.50, 0.30, 99), "clusters": np.arange(PICTURES)}
    results = [
        _run("paper", [(25, 0.51, 0.30), (50, 0.52, 0.25), (100, 0.55, 0.20)]),
        # reaches the paper's final gain at a quarter of its CPU time, as clean
        _run("fast", [(25, 0.56, 0.20), (50, 0.57, 0.20), (100, 0.58, 0.20)]),
        # reaches it sooner but with far more defective pictures: ground truth worse, not counted
        _run("hacked", [(10, 0.60, 0.90), (50, 0.61, 0.90), (100, 0.62, 0.90)]),
        # never reaches it
        _run("slow", [(25, 0.50, 0.30), (50, 0.51, 0.30), (100, 0.52, 0.30)]),
    ]
    table, speedup, winner = ttq.summarise(results, null, ["paper", "fast", "hacked", "slow"])
    assert winner == "fast" and speedup == pytest.approx(4.0)
    assert table["hacked"][0]["versus_paper"]["defective"][1] > 0  # significantly worse: excluded
    assert "versus_paper" not in table["slow"][-1]
    assert table["paper"][-1]["toy-pref"][0] == pytest.approx(0.05, abs=1e-3)


def test_no_estimator_reaching_the_gain_gives_no_speedup():
    null = {"readings": _readings(0.50, 0.30, 99), "clusters": np.arange(PICTURES)}
    results = [_run("paper", [(50, 0.55, 0.3)]), _run("slow", [(50, 0.51, 0.3)])]
    assert ttq.summarise(results, null, ["paper", "slow"])[1:] == (None, None)


def test_reuse_rolls_out_once_per_r_steps_and_still_steps_every_time(monkeypatch):
    import renegx.train.step as module_file

    calls = []
    original = module_file.rollouts

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module_file, "rollouts", counting)
    trainer = ttq.Trainer({**ttq.settings("reuse-4"), "batch": 1}, seed=0)
    before = trainer.module.negative_embeds.detach().clone()
    moved = []
    for _ in range(8):
        trainer.step(8)
        moved.append(not trainer.module.negative_embeds.detach().equal(before))
        before = trainer.module.negative_embeds.detach().clone()
    assert len(calls) == 2 and all(moved)


def test_flops_per_sample_count_the_rollout_calls_each_estimator_makes():
    per_call = 1.0
    paper = ttq.tflop_per_sample(ttq.settings("paper"), per_call)
    # stops 13..19 of 20: mean rollout of 16 calls, two branches each, plus the grad step (4 forwards' worth)
    assert paper == pytest.approx(2 * 16 + 4)
    assert ttq.tflop_per_sample(ttq.settings("reuse-4"), per_call) == pytest.approx(2 * 16 / 4 + 4)
    coarse = ttq.tflop_per_sample(ttq.settings("coarse-4"), per_call)
    assert coarse == pytest.approx(2 * (4 * 4 + 5 * 3) / 7 + 4)  # ceil(stop / 4) calls to each stop
    assert ttq.tflop_per_sample(ttq.settings("paper"), None) is None


def test_estimator_names_are_checked():
    with pytest.raises(SystemExit):
        ttq.parse_args(["--estimators", "paper,warp-drive"])
    with pytest.raises(SystemExit):
        ttq.parse_args(["--estimators", "coarse-4"])


def test_step_phases_split_the_paper_step_and_bound_a_latent_reward():
    phases = ttq.step_phases(steps=2)
    parts = ("rollout", "grad_step", "decode_reward")
    assert all(phases[p] > 0 for p in parts)
    assert sum(phases[f"{p}_share"] for p in parts) == pytest.approx(1.0)
    # the rollout runs at least 13 guided UNet calls (stop in the last 7 of 20), the grad step one
    assert phases["rollout"] > 3 * phases["grad_step"]
    assert 1 < phases["latent_reward_ceiling"] < 2


def test_meta_device_flop_counts_at_sd15_shapes():
    # SD1.5's UNet is ~0.8 TFLOP per 512² call; its VAE decode (~2.5) and a ViT-H-14 tower (~0.33) dwarf it
    # per call, which is why skipping them matters more on SD1.5 shapes than on the toy
    assert 0.7 < ttq.unet_tflop_per_call() < 0.9
    assert 2.6 < ttq.decode_reward_tflop() < 3.1
