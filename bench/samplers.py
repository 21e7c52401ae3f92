"""The adaptive samplers on the toy world: adherence, quality, novelty and cost, null vs learned base.

    python -m bench.samplers --embedding runs/default/version_0/negative.safetensors
    python -m bench.samplers --embedding negative.safetensors --prompts 64 --seeds 0,1 --threads 1

Every sampler draws the same held-out (prompt, seed) pairs, once with the null base and once with the learned
embedding as base. Metrics per picture: the ground truth (`renegx.toyworld.truth`: adherence to every
attribute the prompt names, the share the analytic meters call defective and its most common kinds) and both
toy judges; NFE and wall time are ratios to `cfg/null` in the same process. NPC claims alignment, so a second
table keeps only the pairs where `cfg/null` misses an attribute the prompt names. Novelty: `vlm` vs `cfg` on
prompts naming a shape the toy world has never seen ("a red star"): the share of pictures the classifier
cannot assign to a known shape (top p < 0.5).
Means carry bootstrap 95% CIs, differences to `cfg/null` are paired; `--out` writes each as an estimate
(`Estimate.to_json()`, docs/evaluation.md).
"""

from __future__ import annotations

import argparse

import torch

from renegx.evaluate.protocol import format_estimate
from renegx.files import atomic_write_json
from renegx.negatives.embedding import NegativeEmbedding
from renegx.rewards import ToyIndependentJudge, ToyPreference
from renegx.samplers import build_sampler, load_sampling_model
from renegx.samplers.measure import RunResults, run_grid, summarize, unassigned
from renegx.toyworld import heldout_prompts, load_attribute_net
from renegx.toyworld.truth import load_reader

NOVEL_PROMPTS = ("a red star", "a blue star on a white background", "a large green star", "a yellow star")
# Held-out prompts: vlm asks for defect categories (the toy VQA answers "blurry", "cropped", ...), so its set
# collects the flaws seen along the trajectory. Novelty: vlm asks for the shape, so its set collects the known
# shapes the sample drifts towards (the method's use for creative generation).
SAMPLER_OPTIONS = {
    "cfg": ("cfg", {}),
    "dnp": ("dnp", {"captioner": "toy"}),
    "answer": ("answer", {}),
    "vlm-defects": ("vlm", {"oracle": "toy", "questions": ["What is wrong with this image?"], "top_k": 2}),
    "npc": ("npc", {"candidates": 3}),
}
TRUTH_METRICS = ("adherence", "defective", "cropped", "cluttered")
NOVELTY_OPTIONS = {
    "cfg": ("cfg", {}),
    "vlm-shape": ("vlm", {"oracle": "toy", "questions": ["What shape is it?"]}),
    "vlm-shape-top2": ("vlm", {"oracle": "toy", "questions": ["What shape is it?"], "top_k": 2}),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--embedding", required=True, help="a global embedding trained on the toy world")
    parser.add_argument("--prompts", type=int, default=16, help="held-out prompts")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--novelty-seeds", default="0,1,2,3,4,5,6,7")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


def toy_metrics() -> dict:
    read = load_reader()
    preference, independent = ToyPreference(), ToyIndependentJudge()

    def truth(measure: str):
        return lambda images, prompts: torch.from_numpy(read(images, prompts)[measure]).float()

    return {
        **{measure: truth(measure) for measure in TRUTH_METRICS},
        "toy-pref": lambda images, prompts: preference(images, prompts).detach(),
        "toy-independent": lambda images, prompts: independent(images, prompts).detach(),
    }


def where(results: dict[str, RunResults], keep: torch.Tensor) -> dict[str, RunResults]:
    """Every run restricted to the grid positions `keep` (bool, grid order)."""
    index = keep.nonzero().flatten().tolist()
    return {
        label: RunResults(
            run.images[index],
            [run.prompts[i] for i in index],
            [run.seeds[i] for i in index],
            [run.nfe[i] for i in index],
            [run.seconds[i] for i in index],
        )
        for label, run in results.items()
    }


def shape_probabilities(images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return load_attribute_net("classifier")(images)["shape"].softmax(-1)


def _print(report: dict, metrics: list[str]) -> None:
    for label, entry in report.items():
        cells = [f"{label:<22} nfe×{entry['nfe_ratio']:.2f} time×{entry['time_ratio']:.2f}"]
        for name in metrics:
            m = entry[name]
            cells.append(
                f"{name} {format_estimate(m['mean'], 3, signed=False)} "
                f"Δ {format_estimate(m['minus_reference'], 3)}"
            )
        print(" | ".join(cells))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_sampling_model("toy")
    learned = NegativeEmbedding.load(args.embedding)
    seeds = [int(s) for s in args.seeds.split(",")]
    prompts = heldout_prompts()[: args.prompts]

    def runs_of(table: dict) -> dict:
        runs = {}
        for label, (name, options) in table.items():
            sampler = build_sampler(name, model, {"steps": args.steps, **options})
            runs[f"{label}/null"] = (sampler, None)
            runs[f"{label}/learned"] = (sampler, learned)
        return runs

    metrics = toy_metrics()
    grid = run_grid(runs_of(SAMPLER_OPTIONS), prompts, seeds)
    report = summarize(grid, metrics, reference="cfg/null")
    print(f"# toy world, {len(prompts)} held-out prompts × seeds {seeds}, {args.steps} steps")
    _print(report, list(metrics))
    reference = grid["cfg/null"]
    missed = metrics["adherence"](reference.images, reference.prompts) < 1
    misses = summarize(where(grid, missed), metrics, reference="cfg/null") if missed.sum() > 1 else {}
    print(f"# the {int(missed.sum())} pairs where cfg/null misses an attribute the prompt names")
    _print(misses, list(metrics))

    novelty = {"novelty": unassigned(shape_probabilities), "toy-pref": metrics["toy-pref"]}
    novelty_seeds = [int(s) for s in args.novelty_seeds.split(",")]
    novel_grid = run_grid(runs_of(NOVELTY_OPTIONS), list(NOVEL_PROMPTS), novelty_seeds)
    novel = summarize(novel_grid, novelty, reference="cfg/null")
    print(f"# novelty: {len(NOVEL_PROMPTS)} prompts naming an unseen shape × seeds {novelty_seeds}")
    _print(novel, list(novelty))
    results = {"heldout": report, "missed_by_null": misses, "novel": novel}
    if args.out:
        atomic_write_json(args.out, results)
    return results


if __name__ == "__main__":
    main()
