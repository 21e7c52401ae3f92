"""Evaluation: the HPSv2 benchmark protocol, Parti-Prompts, ImageReward-100 and the toy world, scored by
several judges, compared in pairs with 95% intervals, reported with plots and image grids.

    renegx evaluate --model /models/sd15 --negatives null,"text:blurry, ugly",negative.safetensors \
        --benchmark hpsv2 --hpsv2-prompts /data/hpsv2 --judges hpsv2.1,pickscore,imagereward --out eval/
    renegx evaluate --config evaluate/sd15_hpsv2 --out eval/

| module | what |
|---|---|
| `protocol.py` | HPSv2 chunk means/std ×100, win rates, bootstrap intervals: the one estimate shape |
| `image_stats.py` | pure maths: saturation, colourfulness, seed diversity |
| `benchmarks.py` | the prompt sets (hpsv2, parti, imagereward, toyworld, a file) |
| `judges.py` | judge names → rewards, report scales, each benchmark's natural judges |
| `settings.py` | the run's settings from YAML and the command line |
| `layout.py` | where images, caches and reports live under `--out` |
| `generation.py`, `scoring.py`, `report.py` | the three resumable stages |
| `results.py`, `plots.py` | the report's numbers (from the caches) and pictures |
"""

from renegx.evaluate.protocol import (
    Estimate,
    StyleScore,
    chunk_means,
    cluster_bootstrap,
    format_estimate,
    hps_benchmark_table,
    hps_style_score,
    mean_delta,
    pair_outcomes,
    win_rate,
)

__all__ = [
    "Estimate",
    "StyleScore",
    "chunk_means",
    "cluster_bootstrap",
    "format_estimate",
    "hps_benchmark_table",
    "hps_style_score",
    "mean_delta",
    "pair_outcomes",
    "win_rate",
]
