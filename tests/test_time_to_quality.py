"""bench/time_to_quality.py: how it decides the speed-up, what each estimator runs, its FLOP arithmetic."""

import json
import re
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


def _runs(name: str, points: list[tuple[float, float, float, float]], seeds=(0, 1), set_b=None) -> list[dict]:
    """One run per (fraction, cpu_s, pref, defective) point and training seed, read alike on both sets
    unless `set_b` gives set B's (pref, defective) per point."""
    runs = []
    for k, (fraction, cpu_s, pref, defective) in enumerate(points):
        for seed in seeds:
            b_pref, b_defective = (pref, defective) if set_b is None else set_b[k]
            readings = {
                "A": _readings(pref, defective, 10 * k + seed),
                "B": _readings(b_pref, b_defective, k),
            }
            runs.append(
                {
                    "estimator": name,
                    "seed": seed,
                    "fraction": fraction,
                    "steps": 10,
                    "cpu_s": cpu_s,
                    "readings": readings,
                }
            )
    return runs


NULL = {part: {"readings": _readings(0.50, 0.30, 99), "clusters": np.arange(PICTURES)} for part in ttq.SETS}


def _row(summary: dict, name: str, fraction: float) -> dict:
    return next(r for r in summary["rows"] if r["estimator"] == name and r["fraction"] == fraction)


def test_speedup_is_the_paper_time_over_the_first_run_reaching_its_final_quality_within_the_margins():
    paper = [(0.25, 25, 0.51, 0.30), (0.5, 50, 0.52, 0.25), (1.0, 100, 0.55, 0.20)]
    results = [
        *_runs("paper", paper),
        # within the margin of the paper's final gain at a quarter of the budget, as clean
        *_runs("fast", [(0.25, 25, 0.548, 0.20), (0.5, 50, 0.57, 0.20), (1.0, 100, 0.58, 0.20)]),
        # above the paper's gain sooner but with far more defective pictures: ground truth worse, not counted
        *_runs("hacked", [(0.25, 10, 0.60, 0.90), (0.5, 50, 0.61, 0.90), (1.0, 100, 0.62, 0.90)]),
        # never reaches it
        *_runs("slow", [(0.25, 25, 0.50, 0.30), (0.5, 50, 0.51, 0.30), (1.0, 100, 0.52, 0.30)]),
    ]
    names = ["paper", "fast", "hacked", "slow"]
    summary = ttq.summarise(results, NULL, names, ttq.MARGINS)
    assert summary["winner"] == "fast" and summary["speedup"] == pytest.approx(4.0)
    assert summary["smallest_fraction"] == {"paper": 1.0, "fast": 0.25, "hacked": None, "slow": None}
    hacked = _row(summary, "hacked", 0.25)["A"]
    # clearly worse: excluded
    assert hacked["versus_paper_final"]["defective"]["low"] > ttq.MARGINS["defective"]
    assert hacked["passes"]["toy-pref"] and not hacked["passes"]["defective"] and not hacked["reaches"]
    assert not any(_row(summary, "slow", f)["reaches"] for f in (0.25, 0.5, 1.0))
    assert _row(summary, "paper", 1.0)["A"]["gain"]["toy-pref"]["value"] == pytest.approx(0.05, abs=1e-3)
    # the paper's final point against itself: the same pictures and seeds, a difference of exactly 0
    itself = _row(summary, "paper", 1.0)["A"]["versus_paper_final"]["toy-pref"]
    assert _bounds(itself) == pytest.approx([0, 0, 0])


def test_a_point_counts_only_where_both_evaluation_sets_agree():
    paper = [(0.5, 50, 0.52, 0.25), (1.0, 100, 0.55, 0.20)]
    # on set B the early point falls short of the paper's gain by more than the margin
    early = _runs(
        "early", [(0.5, 50, 0.56, 0.20), (1.0, 100, 0.56, 0.20)], set_b=[(0.52, 0.20), (0.56, 0.20)]
    )
    summary = ttq.summarise([*_runs("paper", paper), *early], NULL, ["paper", "early"], ttq.MARGINS)
    assert _row(summary, "early", 0.5)["A"]["reaches"] and not _row(summary, "early", 0.5)["B"]["reaches"]
    assert summary["smallest_fraction_by_set"]["A"]["early"] == 0.5
    assert summary["smallest_fraction"]["early"] == 1.0 and summary["speedup"] == pytest.approx(1.0)


def test_no_estimator_reaching_the_gain_gives_no_speedup():
    results = [*_runs("paper", [(1.0, 50, 0.55, 0.3)]), *_runs("slow", [(1.0, 50, 0.51, 0.3)])]
    summary = ttq.summarise(results, NULL, ["paper", "slow"], ttq.MARGINS)
    assert (summary["speedup"], summary["winner"]) == (None, None)


def _bounds(estimate: dict) -> list[float]:
    return [estimate[key] for key in ("value", "low", "high")]


def test_the_interval_resamples_training_seeds_as_well_as_prompts():
    clusters = np.repeat(np.arange(20), 2)  # 20 prompts × 2 noises
    base = np.zeros((3, 40))
    # every seed's pictures alike across prompts: only the seeds spread the estimate
    arm = np.stack([np.full(40, shift) for shift in (-0.03, 0.0, 0.06)])
    estimate, low, high = _bounds(ttq.difference_interval(arm, base, clusters))
    assert estimate == pytest.approx(0.01)
    assert low < -0.005 and high > 0.03  # one seed's luck does not pass for a gain
    assert ttq.difference_interval(arm, base, clusters)["n"] == 20  # the prompts
    # a constant shift on every seed and prompt has no spread to resample
    assert _bounds(ttq.difference_interval(base + 0.02, base, clusters)) == pytest.approx([0.02, 0.02, 0.02])
    # unread pictures (NaN, e.g. adherence where a prompt names nothing) are left out
    holed = base.copy()
    holed[:, :2] = np.nan
    assert _bounds(ttq.difference_interval(holed + 0.02, base[:1], clusters)) == pytest.approx([0.02] * 3)


def test_margins_set_how_far_from_the_paper_a_bound_may_be():
    assert ttq.passes("toy-pref", {"value": -0.002, "low": -0.004, "high": 0.0}, {"toy-pref": 0.005})
    assert not ttq.passes("toy-pref", {"value": -0.002, "low": -0.006, "high": 0.0}, {"toy-pref": 0.005})
    assert ttq.passes("defective", {"value": 0.0, "low": -0.02, "high": 0.029}, {"defective": 0.03})
    assert not ttq.passes("defective", {"value": 0.0, "low": -0.02, "high": 0.031}, {"defective": 0.03})
    args = ttq.parse_args(["--margin-pref", "0.01", "--margin-defective", "0.05"])
    assert ttq.margins_of(args) == {**ttq.MARGINS, "toy-pref": 0.01, "defective": 0.05}


def test_a_run_given_a_fraction_of_the_budget_decays_its_own_schedule_to_its_end():
    trainer = ttq.Trainer({**ttq.settings("paper"), "batch": 1}, seed=0, total_steps=3)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(ttq.settings("paper")["lr"])
    before = trainer.negative
    for _ in range(3):
        trainer.step()
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0)
    assert not trainer.negative.equal(before)


def test_reuse_rolls_out_once_per_r_steps_and_still_steps_every_time(monkeypatch):
    import renegx.train.step as module_file

    calls = []
    original = module_file.rollouts

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module_file, "rollouts", counting)
    trainer = ttq.Trainer({**ttq.settings("reuse-4"), "batch": 1}, seed=0, total_steps=9)
    before = trainer.negative
    moved = []
    for _ in range(8):
        trainer.step()
        moved.append(not trainer.negative.equal(before))
        before = trainer.negative
    assert len(calls) == 2 and all(moved)


def test_the_bench_touches_no_private_member():
    source = Path(ttq.__file__).read_text()
    assert not re.findall(r"\.\_[A-Za-z]\w*", source)  # no `thing._member`
    assert not re.findall(r"import [^\n]*\b_[A-Za-z]\w*", source)  # no private name imported


def test_flops_per_sample_count_the_rollout_calls_each_estimator_makes():
    per_call = 1.0
    paper = ttq.tflop_per_sample(ttq.settings("paper"), per_call)
    # stops 13..19 of 20: mean rollout of 16 calls, two branches each, plus the grad step (4 forwards' worth)
    assert paper == pytest.approx(2 * 16 + 4)
    assert ttq.tflop_per_sample(ttq.settings("reuse-4"), per_call) == pytest.approx(2 * 16 / 4 + 4)
    coarse = ttq.tflop_per_sample(ttq.settings("coarse-4"), per_call)
    assert coarse == pytest.approx(2 * (4 * 4 + 5 * 3) / 7 + 4)  # ceil(stop / 4) calls to each stop
    assert ttq.tflop_per_sample(ttq.settings("paper"), None) is None


def test_estimator_names_and_evaluation_sets_are_checked():
    with pytest.raises(SystemExit):
        ttq.parse_args(["--estimators", "paper,warp-drive"])
    with pytest.raises(SystemExit):
        ttq.parse_args(["--estimators", "coarse-4"])
    with pytest.raises(SystemExit):  # the two sets share noises
        ttq.parse_args(["--eval-seeds", "8000,8001", "--second-seeds", "8001"])
    with pytest.raises(SystemExit):  # the two sets share prompts
        ttq.parse_args(["--split", "heldout", "--second-split", "heldout"])
    with pytest.raises(SystemExit):  # no final point to compare with
        ttq.parse_args(["--eval-at", "0.25,0.5"])


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


@pytest.mark.slow
def test_quick_run_prints_every_interval_and_a_decision(tmp_path):
    lines = []
    out = tmp_path / "ttq.json"
    argv = ["--quick", "--estimators", "paper,late-lr-4x", "--workers", "1", "--out", str(out)]
    speedup = ttq.main(argv, report=lines.append)
    expected = "none" if speedup is None else f"{speedup:.2f} (late-lr-4x"
    assert lines[-1].startswith(f"time_to_quality_speedup: {expected}")
    assert any(line.startswith("margins (non-inferiority") for line in lines)
    record = json.loads(out.read_text())
    rows = record["decision"]["rows"]
    # a run per estimator and fraction, each read on both sets with an interval on every measure
    assert {(r["estimator"], r["fraction"]) for r in rows} == {
        (name, f) for name in ("paper", "late-lr-4x") for f in (0.5, 1.0)
    }
    for row in rows:
        for part in ttq.SETS:
            for measure in ttq.MEASURES:
                value, low, high = _bounds(row[part]["versus_paper_final"][measure])
                assert low - 1e-12 <= value <= high + 1e-12
    # a point at half the budget is a run given half the budget: about half the final run's steps
    steps = {(r["estimator"], r["fraction"]): r["steps"] for r in rows}
    assert steps[("paper", 0.5)] == pytest.approx(steps[("paper", 1.0)] / 2, abs=1)
