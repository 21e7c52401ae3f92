"""The evaluation maths on synthetic scores: HPSv2 chunks and ×100, paired outcomes, bootstrap coverage."""

import json

import numpy as np
import pytest
from assertions import assert_estimate, assert_one_line_error

from renegx.evaluate.image_stats import colourfulness, saturation, seed_diversity
from renegx.evaluate.protocol import (
    ProtocolError,
    chunk_means,
    cluster_bootstrap,
    format_estimate,
    hps_benchmark_table,
    hps_style_score,
    mean_delta,
    pair_outcomes,
    win_rate,
)


def official_style_numbers(scores):
    """tgxs002/HPSv2 `evaluate_benchmark`, as written there: 80-prompt chunks of 800 ×100 scores, np.std."""
    res = list(np.asarray(scores) * 100)
    avg_score = [np.mean(res[i : i + 80]) for i in range(0, 800, 80)]
    return np.mean(avg_score), np.std(avg_score)


def test_chunk_means_of_known_chunks():
    scores = np.repeat(np.arange(10.0), 80)
    assert chunk_means(scores).tolist() == list(np.arange(10.0))
    assert chunk_means([1.0, 2.0, 3.0], chunk=2).tolist() == [1.5, 3.0]


def test_style_score_is_mean_of_chunk_means_and_population_std_times_100():
    scores = 0.2 + 0.01 * np.repeat(np.arange(10.0), 80)  # chunk k has mean 0.2 + 0.01 k
    style = hps_style_score(scores)
    assert style.mean == pytest.approx(24.5)
    assert style.std == pytest.approx(np.arange(10.0).std())  # ddof 0: 2.8723
    assert (style.chunks, style.prompts) == (10, 800)


def test_style_score_equals_the_official_code_on_random_scores():
    scores = np.random.default_rng(0).normal(0.27, 0.02, 800)
    style = hps_style_score(scores)
    mean, std = official_style_numbers(scores)
    assert style.mean == pytest.approx(mean, abs=1e-9)
    assert style.std == pytest.approx(std, abs=1e-9)


def test_benchmark_average_is_over_all_images_times_100():
    rng = np.random.default_rng(1)
    by_style = {s: rng.normal(0.25, 0.03, 800) for s in ("anime", "concept-art", "paintings", "photo")}
    styles, average = hps_benchmark_table(by_style)
    assert average == pytest.approx(100 * np.concatenate(list(by_style.values())).mean())
    assert set(styles) == set(by_style)


def test_pair_outcomes_count_ties_half():
    assert pair_outcomes([1, 2, 3, 5], [1, 1, 4, 5]).tolist() == [0.5, 1.0, 0.0, 0.5]


def test_all_ties_give_exactly_half_with_a_zero_width_interval():
    estimate = win_rate([0.3] * 20, [0.3] * 20)
    assert (estimate.value, estimate.low, estimate.high) == (0.5, 0.5, 0.5)


def test_win_rate_and_delta_values():
    a, b = [3.0, 1.0, 2.0, 2.0], [1.0, 2.0, 1.0, 2.0]
    assert win_rate(a, b).value == pytest.approx((1 + 0 + 1 + 0.5) / 4)
    assert mean_delta(a, b).value == pytest.approx(0.5)


def test_bootstrap_interval_covers_a_known_win_probability_about_95_percent_of_the_time():
    rng = np.random.default_rng(2)
    p, pairs, trials = 0.6, 100, 300
    covered = 0
    for trial in range(trials):
        outcomes = (rng.random(pairs) < p).astype(float)
        estimate = cluster_bootstrap(outcomes, resamples=500, seed=trial)
        covered += estimate.low <= p <= estimate.high
    assert 0.90 <= covered / trials <= 0.985


def test_bootstrap_interval_covers_a_known_mean_delta():
    rng = np.random.default_rng(3)
    covered = sum(
        (e := mean_delta(rng.normal(1.0, 1.0, 60), rng.normal(0.8, 1.0, 60), resamples=500, seed=t)).low
        <= 0.2
        <= e.high
        for t in range(200)
    )
    assert 0.89 <= covered / 200 <= 0.99


def test_clusters_are_resampled_whole():
    """Two identical seeds per prompt carry no more information than one: the interval is unchanged."""
    values = np.random.default_rng(4).normal(size=30)
    alone = cluster_bootstrap(values, seed=7)
    doubled = cluster_bootstrap(np.repeat(values, 2), clusters=np.repeat(np.arange(30), 2), seed=7)
    iid = cluster_bootstrap(np.repeat(values, 2), seed=7)
    assert (doubled.low, doubled.high) == pytest.approx((alone.low, alone.high))
    assert (doubled.pairs, doubled.n) == (60, 30)
    assert iid.high - iid.low < doubled.high - doubled.low


def test_an_estimate_is_written_with_its_resampled_units_and_printed_as_value_and_interval():
    estimate = cluster_bootstrap([0.1, 0.3, 0.2, 0.6, 0.4, 0.5], clusters=[0, 0, 1, 1, 2, 2], seed=1)
    written = json.loads(json.dumps(estimate.to_json()))
    assert_estimate(written, n=3)  # three prompts resampled, not six pairs
    assert written == {"value": estimate.value, "low": estimate.low, "high": estimate.high, "n": 3}
    difference = {"value": 0.05, "low": -0.0125, "high": 0.1, "n": 2}
    assert format_estimate(difference) == "+0.0500 [-0.0125, +0.1000]"
    assert format_estimate({"value": -0.5, "low": -0.74, "high": -0.26, "n": 2}, 1) == "-0.5 [-0.7, -0.3]"
    share = {"value": 0.55, "low": 0.4, "high": 0.7, "n": 3}
    assert format_estimate(share, 1, scale=100, signed=False) == "55.0 [40.0, 70.0]"


def test_protocol_errors_are_one_line():
    assert_one_line_error(ProtocolError, lambda: cluster_bootstrap([]), "need at least one pair")
    assert_one_line_error(ProtocolError, lambda: pair_outcomes([1, 2], [1]), "equal length")
    assert_one_line_error(ProtocolError, lambda: chunk_means([]), "non-empty")


def test_image_statistics_on_known_images():
    grey = np.full((8, 8, 3), 0.5)
    red = np.zeros((8, 8, 3))
    red[..., 0] = 1.0
    assert saturation(grey) == 0.0 and colourfulness(grey) == 0.0
    assert saturation(red) == 1.0
    assert colourfulness(red) == pytest.approx(0.3 * np.hypot(255.0, 127.5))
    assert saturation(np.zeros((4, 4, 3))) == 0.0  # black has no hue; no division by zero
    assert seed_diversity([grey, grey, grey]) == 0.0
    assert seed_diversity([np.zeros((4, 4, 3)), np.ones((4, 4, 3))]) == pytest.approx(1.0)
