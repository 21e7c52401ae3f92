"""Pure maths of the evaluation: the HPSv2 benchmark numbers, paired win rates and bootstrap intervals.

No files and no torch: arrays in, numbers out, so every formula is tested on synthetic scores.

HPSv2 (tgxs002/HPSv2 `evaluate_benchmark`): per style, scores in prompt-index order, ×100, averaged over
consecutive 80-prompt chunks; the style's number is the mean of the chunk means and its spread the
population std (`np.std`, ddof 0) across chunks; "Average" is the mean over every image of every style.

Paired comparisons: method A and method B drew each (prompt, seed) from the same noise; a pair scores
1 if A's reward is higher, 0.5 on a tie and 0 otherwise. The win rate is the mean over pairs; its 95%
interval is a percentile bootstrap that resamples *prompts* (with all their seeds), since the seeds of one
prompt are not independent. Mean score deltas get the same interval.

Every estimate renegx writes is `Estimate.to_json()`, `{"value", "low", "high", "n"}` with `n` the units
resampled (prompts), and is printed by `format_estimate` as `+v [lo, hi]` (docs/evaluation.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from renegx.errors import RenegxError

HPS_CHUNK = 80
HPS_SCALE = 100.0
CI_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 2000


class ProtocolError(RenegxError):
    """Scores that a protocol cannot summarise (empty, misaligned); the message is one line."""


@dataclass(frozen=True)
class StyleScore:
    """One style of the HPSv2 table: mean of chunk means, std across chunks, how many chunks and prompts."""

    mean: float
    std: float
    chunks: int
    prompts: int


@dataclass(frozen=True)
class Estimate:
    """A mean over `pairs` values with its bootstrap interval [low, high] at `level`, resampling `n` units
    (prompts: the clusters)."""

    value: float
    low: float
    high: float
    n: int
    pairs: int
    level: float = CI_LEVEL

    def to_json(self) -> dict:
        """The one shape of an estimate in every JSON file: `{"value", "low", "high", "n"}`."""
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}


def format_estimate(estimate: dict, digits: int = 4, scale: float = 1.0, signed: bool = True) -> str:
    """`+v [lo, hi]` of an `Estimate.to_json()` with `digits` decimals, each number times `scale`; without
    the signs where `signed` is False (a share or a win rate, not a difference)."""
    spec = f"{'+' if signed else ''}.{digits}f"
    value, low, high = (format(scale * estimate[key], spec) for key in ("value", "low", "high"))
    return f"{value} [{low}, {high}]"


def noise_seed(seed: int, prompt_index: int) -> int:
    """The noise of (`seed`, prompt `prompt_index`): each prompt gets its own, the same for every negative.
    A seed shared by all prompts would give the toy generator one layout for them all (its noise, not the
    prompt, decides where the shape goes), so two seeds would be two layouts whatever the prompt count."""
    return seed * 1000 + prompt_index


def chunk_means(scores: Sequence[float], chunk: int = HPS_CHUNK) -> np.ndarray:
    """Means of consecutive `chunk`-long slices of `scores` (prompt order); the last slice may be shorter."""
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ProtocolError(f"expected a non-empty 1-d list of scores, got shape {values.shape}")
    if chunk < 1:
        raise ProtocolError(f"chunk size must be >= 1, got {chunk}")
    return np.array([values[start : start + chunk].mean() for start in range(0, values.size, chunk)])


def hps_style_score(scores: Sequence[float], scale: float = HPS_SCALE, chunk: int = HPS_CHUNK) -> StyleScore:
    """The HPSv2 number of one style from its raw scores (cosines, in prompt-index order)."""
    means = chunk_means(np.asarray(scores, dtype=np.float64) * scale, chunk)
    return StyleScore(float(means.mean()), float(means.std()), int(means.size), len(scores))


def hps_benchmark_table(
    scores_by_style: dict[str, Sequence[float]], scale: float = HPS_SCALE, chunk: int = HPS_CHUNK
) -> tuple[dict[str, StyleScore], float]:
    """Per style `StyleScore`, and the "Average": the mean of every scaled score of every style."""
    table = {style: hps_style_score(scores, scale, chunk) for style, scores in scores_by_style.items()}
    everything = np.concatenate([np.asarray(s, dtype=np.float64) for s in scores_by_style.values()])
    return table, float(everything.mean() * scale)


def pair_outcomes(scores_a: Sequence[float], scores_b: Sequence[float]) -> np.ndarray:
    """Per pair 1.0 where A scores higher, 0.5 on an exact tie, 0.0 where B scores higher."""
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ProtocolError(f"paired scores must be 1-d and of equal length, got {a.shape} and {b.shape}")
    return (a > b).astype(np.float64) + 0.5 * (a == b)


def cluster_bootstrap(
    values: Sequence[float],
    clusters: Sequence[int] | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = CI_LEVEL,
    seed: int = 0,
) -> Estimate:
    """Mean of `values` with a percentile bootstrap interval that resamples whole clusters.

    Args:
        values: one number per pair (an outcome 1/0.5/0, or a score delta).
        clusters: the cluster (prompt) of each value; None makes every value its own cluster.
        resamples: bootstrap resamples; level: interval coverage; seed: the resampling RNG's seed.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ProtocolError(f"cannot bootstrap {x.size} values: need at least one pair")
    if resamples < 1 or not 0.0 < level < 1.0:
        raise ProtocolError(f"need resamples >= 1 and 0 < level < 1, got {resamples} and {level}")
    ids = np.arange(x.size) if clusters is None else np.asarray(clusters)
    if ids.shape != x.shape:
        raise ProtocolError(f"got {ids.size} cluster ids for {x.size} values")
    _, inverse = np.unique(ids, return_inverse=True)
    sums = np.bincount(inverse, weights=x)
    counts = np.bincount(inverse).astype(np.float64)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, sums.size, size=(resamples, sums.size))
    means = sums[drawn].sum(axis=1) / counts[drawn].sum(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Estimate(float(x.mean()), float(low), float(high), int(sums.size), int(x.size), level)


def win_rate(
    scores_a: Sequence[float],
    scores_b: Sequence[float],
    clusters: Sequence[int] | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> Estimate:
    """How often A beats B on paired scores (ties count half), with a cluster-bootstrap 95% interval."""
    return cluster_bootstrap(pair_outcomes(scores_a, scores_b), clusters, resamples, CI_LEVEL, seed)


def mean_delta(
    scores_a: Sequence[float],
    scores_b: Sequence[float],
    clusters: Sequence[int] | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> Estimate:
    """Mean of A − B over pairs, with a cluster-bootstrap 95% interval."""
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ProtocolError(f"paired scores must be of equal length, got {a.shape} and {b.shape}")
    return cluster_bootstrap(a - b, clusters, resamples, CI_LEVEL, seed)
