"""The numbers of a report, computed from the score caches (no model runs here).

`compute_results` returns one JSON-able mapping, written as `report.json` and rendered by `report.py`:
per judge the mean score of each negative (overall and per style/category), the HPSv2 table where the
benchmark and judge call for it, and against the baseline negative the paired win rate and mean score
delta with 95% intervals; per negative the judge-free image statistics.
"""

from __future__ import annotations

import numpy as np

from renegx.evaluate.benchmarks import HPS_STYLES, Benchmark
from renegx.evaluate.judges import Judge
from renegx.evaluate.layout import Layout
from renegx.evaluate.protocol import hps_benchmark_table, mean_delta, win_rate
from renegx.evaluate.scoring import load_ground_truth, load_scores, load_stats
from renegx.evaluate.settings import EvaluationSettings

OVERALL = "all"


def compute_results(
    settings: EvaluationSettings, benchmark: Benchmark, layout: Layout, judges: list[Judge]
) -> dict:
    labels = list(settings.negatives)
    baseline = settings.baseline_label()
    # (key, cluster, breakdown values) of every image this run asks for; a prompt is a bootstrap cluster.
    slots = [
        (
            layout.key(seed, item.group, item.index),
            cluster,
            {b: item.tags.get(b, "") for b in benchmark.breakdowns},
        )
        for cluster, item in enumerate(benchmark.items)
        for seed in settings.seeds
    ]
    results = {
        "benchmark": {
            "name": benchmark.name,
            "prompts": len(benchmark.items),
            "complete": benchmark.complete,
            "breakdowns": list(benchmark.breakdowns),
        },
        "seeds": list(settings.seeds),
        "negatives": dict(settings.negatives),
        "baseline": baseline,
        "judges": {},
        "image_stats": {label: _image_stats(layout, label, slots, settings.seeds) for label in labels},
    }
    for judge in judges:
        raw = {label: load_scores(layout, judge.name, label) for label in labels}
        results["judges"][judge.name] = _judge_results(judge, raw, slots, benchmark, settings, baseline)
    truth = _ground_truth(layout, labels, slots, baseline)
    if truth:
        results["ground_truth"] = truth
    return results


def _ground_truth(layout: Layout, labels: list[str], slots: list, baseline: str) -> dict:
    """The toy world's meters and classifier per negative, paired against the baseline on the images every
    negative has ({} when no ground truth was read)."""
    read = {label: load_ground_truth(layout, label) for label in labels}
    keys = [(key, cluster) for key, cluster, _ in slots if all(key in read[label] for label in labels)]
    if not keys:
        return {}
    from renegx.toyworld.truth import meter_floor, truth_table

    measures = [m for m in read[labels[0]][keys[0][0]] if m != "sha1"]
    readings = {
        label: {
            m: np.array([np.nan if (v := read[label][key][m]) is None else v for key, _ in keys], dtype=float)
            for m in measures
        }
        for label in labels
    }
    clusters = np.array([cluster for _, cluster in keys])
    return {
        "images": len(keys),
        "meter_floor": meter_floor(),
        "table": truth_table(readings, clusters, baseline),
    }


def _judge_results(
    judge: Judge, raw: dict, slots: list, benchmark: Benchmark, settings, baseline: str
) -> dict:
    scaled = {label: {k: v * judge.scale for k, v in scores.items()} for label, scores in raw.items()}
    means, distributions = {}, {}
    for label, scores in scaled.items():
        present = [(key, tags) for key, _, tags in slots if key in scores]
        distributions[label] = [scores[key] for key, _ in present]
        means[label] = {
            OVERALL: _mean([scores[key] for key, _ in present]),
            "n": len(present),
            "missing": len(slots) - len(present),
            **{
                breakdown: {
                    value: _mean([scores[key] for key, tags in present if tags[breakdown] == value])
                    for value in _values(slots, breakdown)
                }
                for breakdown in benchmark.breakdowns
            },
        }
    comparisons = {}
    for label in scaled:
        if label == baseline:
            continue
        comparisons[label] = _paired(scaled[label], scaled[baseline], slots, benchmark.breakdowns, settings)
    return {
        "judge": judge.to_json(),
        "means": means,
        "distributions": distributions,
        "versus_baseline": comparisons,
        "hpsv2": _hps_table(raw, benchmark, settings)
        if judge.hps_version and benchmark.name == "hpsv2"
        else None,
    }


def _paired(scores_a: dict, scores_b: dict, slots: list, breakdowns, settings) -> dict:
    """Win rate and mean delta of A over B, overall and per breakdown value, on pairs both have scored."""
    pairs = [(key, cluster, tags) for key, cluster, tags in slots if key in scores_a and key in scores_b]

    def estimate(selected) -> dict | None:
        if not selected:
            return None
        a = [scores_a[key] for key, _, _ in selected]
        b = [scores_b[key] for key, _, _ in selected]
        clusters = [cluster for _, cluster, _ in selected]
        options = {"resamples": settings.bootstrap, "seed": settings.bootstrap_seed}
        return {
            "win_rate": win_rate(a, b, clusters, **options).to_json(),
            "delta": mean_delta(a, b, clusters, **options).to_json(),
        }

    return {
        OVERALL: estimate(pairs),
        **{
            breakdown: {
                value: estimate([p for p in pairs if p[2][breakdown] == value])
                for value in _values(slots, breakdown)
            }
            for breakdown in breakdowns
        },
    }


def _hps_table(raw: dict, benchmark: Benchmark, settings) -> dict:
    """The HPSv2 table per negative; a prompt's score is its mean over seeds (the protocol has one seed)."""
    groups = benchmark.groups()
    table = {}
    for label, scores in raw.items():
        per_style = {}
        for style in HPS_STYLES:
            keys = [
                [f"seed{seed}/{style}/{item.index:05d}" for seed in settings.seeds] for item in groups[style]
            ]
            if not keys or not all(k in scores for row in keys for k in row):
                per_style = None  # the protocol needs every prompt of every style
                break
            per_style[style] = [float(np.mean([scores[k] for k in row])) for row in keys]
        if per_style is None:
            table[label] = None
            continue
        styles, average = hps_benchmark_table(per_style)
        table[label] = {
            "styles": {
                s: {"mean": v.mean, "std": v.std, "chunks": v.chunks, "prompts": v.prompts}
                for s, v in styles.items()
            },
            "average": average,
        }
    return table


def _image_stats(layout: Layout, label: str, slots: list, seeds: list[int]) -> dict:
    stats = load_stats(layout, label)
    images = [stats["images"][key] for key, _, _ in slots if key in stats["images"]]
    prompts = sorted({key.split("/", 1)[1] for key, _, _ in slots})
    diversity = [
        entry["value"]
        for prompt in prompts
        if (entry := stats["diversity"].get(prompt)) is not None and entry["seeds"] == list(seeds)
    ]
    return {
        "images": len(images),
        "saturation": _mean([i["saturation"] for i in images]),
        "colourfulness": _mean([i["colourfulness"] for i in images]),
        "diversity": _mean(diversity),
        "diversity_prompts": len(diversity),
    }


def _values(slots: list, breakdown: str) -> list[str]:
    return list(dict.fromkeys(tags[breakdown] for _, _, tags in slots))


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None
