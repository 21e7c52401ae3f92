"""Measuring samplers against each other on the same prompts and seeds: cost ratios and scores with CIs.

    runs = {"cfg/null": (build_sampler("cfg", model), None), "vlm/learned": (vlm_sampler, embedding)}
    results = run_grid(runs, prompts, seeds)
    report = summarize(results, {"validity": judge, "novelty": unassigned(classifier)}, reference="cfg/null")

Every run draws the same (prompt, seed) pairs, so scores are compared pairwise: each label gets its mean and
its paired difference to the reference, each an estimate with a bootstrap 95% CI (`Estimate.to_json()`); NFE
and wall time are reported as ratios to the reference measured in the same process (absolute CPU times
mean little).
A metric is `metric(images (N, 3, H, W) in [0, 1], prompts) -> (N,)` scores, e.g. a reward or a judge.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from renegx.evaluate.protocol import cluster_bootstrap

Metric = Callable[[torch.Tensor, list[str]], torch.Tensor]


@dataclass
class RunResults:
    """What one sampler configuration produced over the grid, in grid order."""

    images: torch.Tensor  # (N, 3, H, W) in [0, 1]
    prompts: list[str]
    seeds: list[int]
    nfe: list[int]
    seconds: list[float]


def run_grid(runs: dict, prompts: list[str], seeds: list[int]) -> dict[str, RunResults]:
    """Draw every prompt × seed with each `label -> (sampler, base negative)`."""
    results = {}
    for label, (sampler, base) in runs.items():
        images, nfe, seconds, grid = [], [], [], [(p, s) for p in prompts for s in seeds]
        for prompt, seed in grid:
            result = sampler.sample(prompt, seed, base=base)
            images.append(result.image.cpu())
            nfe.append(result.record.nfe)
            seconds.append(result.record.seconds)
        results[label] = RunResults(
            torch.cat(images), [p for p, _ in grid], [s for _, s in grid], nfe, seconds
        )
    return results


def unassigned(probabilities_of: Callable[[torch.Tensor], torch.Tensor], threshold: float = 0.5) -> Metric:
    """A novelty metric: 1 where a classifier's top class probability is below `threshold` (no known
    class fits), e.g. the toy world's shape classifier on a "new kind of shape" prompt."""

    def metric(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return (probabilities_of(images).max(dim=1).values < threshold).float()

    return metric


def summarize(results: dict[str, RunResults], metrics: dict[str, Metric], reference: str) -> dict:
    """Per label: NFE and time ratios to `reference`, and per metric `mean` and `minus_reference` (the
    paired difference), each an `Estimate.to_json()` that resamples prompts."""
    base = results[reference]
    # intervals resample prompts: a prompt's seeds are not independent draws
    clusters = [base.prompts.index(prompt) for prompt in base.prompts]
    base_scores = {name: metric(base.images, base.prompts).float() for name, metric in metrics.items()}
    report = {}
    for label, run in results.items():
        if (run.prompts, run.seeds) != (base.prompts, base.seeds):
            raise ValueError(f"run '{label}' did not draw the same prompts and seeds as '{reference}'")
        entry = {
            "images": len(run.nfe),
            "nfe_mean": sum(run.nfe) / len(run.nfe),
            "nfe_ratio": sum(run.nfe) / sum(base.nfe),
            "time_ratio": sum(run.seconds) / sum(base.seconds),
        }
        for name, metric in metrics.items():
            scores = base_scores[name] if label == reference else metric(run.images, run.prompts).float()
            entry[name] = {
                "mean": cluster_bootstrap(scores.double().numpy(), clusters).to_json(),
                "minus_reference": cluster_bootstrap(
                    (scores - base_scores[name]).double().numpy(), clusters
                ).to_json(),
            }
        report[label] = entry
    return report
