"""The toy world's quality bars, measured on the shipped weights (held-out prompts, fixed seeds).

1. The generator is real: with CFG and the null negative the attribute classifier recognises the captioned
   shape and colour in >= 80% of samples. The second generator (`toy-sibling`, narrower, the transfer
   target) is weaker: >= 70%.
2. `python train.py` (configs/train/default.yaml, unchanged) ends with the learned embedding above null and
   above the handcrafted negative on both judges, CI lower bounds > 0, and reports the ground truth beside
   them in its summary and its log, with a labelled grid, and the training-time monitor's readings in its
   log. On its 512 held-out pictures per negative (64 prompts × 8 noises) the table resolves what the
   negative does: there is headroom (null's defective share,
   the lower bound of its 95% interval included, at least three times the meters' floor on clean pictures;
   0.25 is met by the share itself, 0.254, not by its interval), the learned negative removes defects (the
   upper bound of learned − null below 0) and holds adherence (the lower bound at least −0.02). The goal of
   at most 0.7 × null's defective share is not met on these held-out pictures (0.76 ×; docs/toyworld.md,
   "Measured"). The handcrafted negative prompt is measurably worse than null.
3. Transfer: that embedding, used with the second generator (same text encoder, another UNet), still beats
   null on both judges with CI lower bounds > 0, with fewer defective pictures than null.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from renegx.configs import path_of
from renegx.toyworld.scene import named_attributes

SEEDS = (7000, 7001)
# toy-flow (recipe 5) on 64 training prompts x 2 noises, w = 5, null negative: shape and colour
# right in 0.344 [0.265, 0.430] of 128 pictures; the bar is that interval's lower bound, rounded down.
FLOW_BAR, FLOW_GUIDANCE = 0.25, 5.0
ACCURACY_BARS = {"toy": 0.8, "toy-sibling": 0.7, "toy-flow": FLOW_BAR}
GUIDANCE = {"toy": 7.5, "toy-sibling": 7.5, "toy-flow": FLOW_GUIDANCE}
CONFIG = path_of("train/default")


@pytest.fixture(scope="module", params=list(ACCURACY_BARS))
def null_samples(request):
    from renegx.evaluate.held_out import held_out_pairs
    from renegx.guidance import rollout_to
    from renegx.models import load_backbone
    from renegx.toyworld import heldout_prompts

    backbone = load_backbone(request.param)
    schedule = backbone.schedule(20)  # DDIM for the UNets, flow-matching Euler for toy-flow
    pairs = held_out_pairs(heldout_prompts(), SEEDS)
    prompts, seeds = [p for p, _, _ in pairs], [noise for _, _, noise in pairs]
    latents = torch.cat(
        [torch.randn((1, *backbone.latent_shape), generator=torch.Generator().manual_seed(s)) for s in seeds]
    )
    with torch.no_grad():
        final = rollout_to(
            backbone.unet,
            schedule,
            latents,
            backbone.null_embedding(),
            backbone.encode_prompts(prompts),
            GUIDANCE[request.param],
            20,
        )
        return request.param, prompts, backbone.decode_to_pixels(final)


@pytest.mark.slow
def test_generator_draws_what_the_prompt_asks_for(null_samples):
    from renegx.toyworld import load_attribute_net

    model, prompts, images = null_samples
    rows = load_attribute_net("classifier").describe(images)
    hits = [
        (named_attributes(p).get("shape"), named_attributes(p).get("colour")) == (r["shape"], r["colour"])
        for p, r in zip(prompts, rows, strict=True)
    ]
    accuracy = sum(hits) / len(hits)
    print(f"{model}: attribute accuracy (CFG, null negative): {accuracy:.3f} over {len(hits)} samples")
    assert accuracy >= ACCURACY_BARS[model]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """`python train.py` as shipped, run once: (summary.json, the run folder)."""
    from renegx.cli import train_main

    folder = tmp_path_factory.mktemp("default")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        train_main(["fit", "--config", str(CONFIG)])
    summary_path = next(folder.glob("runs/default/version_*/summary.json"))
    return json.loads(summary_path.read_text()), summary_path.parent


@pytest.mark.slow
def test_default_training_beats_null_and_handcrafted_on_both_judges(default_run):
    summary, run_folder = default_run
    print(json.dumps(summary["judges"], indent=1))
    for judge in ("toy-pref", "toy-independent"):
        row = summary["judges"][judge]
        assert row["learned_minus_null"]["low"] > 0, judge
        assert row["learned_minus_handcrafted"]["low"] > 0, judge
    truth = summary["ground_truth"]
    print(json.dumps({name: {k: row[k] for k in ("defective", "adherence")} for name, row in truth.items()}))
    assert set(truth) == {"null", "handcrafted", "learned"} and len(summary["seeds"]) == 8
    # headroom: null's defective share, its lower bound included, three times what clean pictures read
    assert truth["null"]["defective_ci"]["low"] >= 3 * summary["meter_floor"]
    learned = truth["learned"]
    assert learned["defective_minus_null"]["high"] < 0  # the table resolves the gain: its upper bound below 0
    assert learned["adherence_minus_null"]["low"] >= -0.02
    assert truth["handcrafted"]["defective_minus_null"]["low"] > 0
    assert summary["negative_from"] == 0.5 and (run_folder / Path(summary["grid"]).name).is_file()
    logged = (run_folder / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"held_out/toy-pref_minus_null", "held_out/defective_minus_null_high"} <= set(logged)
    assert not any(column.startswith("val/") for column in logged)  # the held-out measurement replaces it
    # the training-time monitor: in the log, its file and its plot, at steps 0, 125 and 250
    assert {"monitor/toy-pref_minus_null", "monitor/defective_minus_null_low"} <= set(logged)
    readings = json.loads((run_folder / "monitor.json").read_text())["readings"]
    assert [r["step"] for r in readings] == [0, 125, 250] and (run_folder / "monitor.png").is_file()
    assert Path(summary["embedding"]).name == "negative.safetensors"
    assert (run_folder / "negative.safetensors").is_file()


@pytest.mark.slow
def test_the_learned_embedding_transfers_to_the_second_generator(default_run, tmp_path):
    from renegx.evaluate.held_out import HeldOutSummary
    from renegx.negatives.embedding import NegativeEmbedding
    from renegx.rewards import ToyPreference
    from renegx.train.module import ReNegModule

    _, run_folder = default_run
    learned = NegativeEmbedding.load(run_folder / "negative.safetensors")
    module = ReNegModule(
        model="toy-sibling",
        reward=ToyPreference(),
        num_inference_steps=20,
        stop_steps=7,
        negative_from=learned.negative_from,
    )
    with torch.no_grad():
        module.negative_embeds.copy_(learned.embeds)
    transfer = HeldOutSummary().summarise(module, tmp_path)
    print(json.dumps(transfer["judges"], indent=1))
    print(
        json.dumps({k: v for k, v in transfer["ground_truth"]["learned"].items() if "minus" in k}, indent=1)
    )
    # Per-prompt noise, drawn late as on `toy`: both judges' gains carry over, and the ground truth follows
    # (docs/toyworld.md, "Transfer to the second generator").
    assert transfer["judges"]["toy-independent"]["learned_minus_null"]["low"] > 0
    assert transfer["judges"]["toy-pref"]["learned_minus_null"]["low"] > 0
    truth = transfer["ground_truth"]
    assert truth["learned"]["defective"] < truth["null"]["defective"]
