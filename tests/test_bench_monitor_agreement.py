"""The monitor-agreement benchmark reads the monitor's and the held-out estimates in their one shape."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.monitor_agreement import difference, estimates, resolved_sign  # noqa: E402


def _table(shift: float) -> dict:
    """A reading or summary.json as the monitor and the held-out table write it: judges rows and the truth."""

    def estimate(value, half):
        return {"value": value, "low": value - half, "high": value + half, "n": 4}

    return {
        "judges": {
            judge: {"null": 0.5, "learned": 0.5 + shift, "learned_minus_null": estimate(shift, 0.02)}
            for judge in ("toy-pref", "toy-independent")
        },
        "ground_truth": {
            "learned": {
                "defective_minus_null": estimate(-shift, 0.03),
                "adherence_minus_null": estimate(0.0, 0.04),
                "soft_minus_null": estimate(-shift, 0.05),
            }
        },
    }


def test_estimates_are_read_whole_and_compared_in_the_same_shape():
    monitor, held_out = estimates(_table(0.1)), estimates(_table(0.06))
    assert set(monitor) == {"toy-pref", "toy-independent", "defective", "adherence"}
    assert monitor["toy-pref"] == {"value": 0.1, "low": 0.08, "high": pytest.approx(0.12), "n": 4}
    assert [resolved_sign(monitor[m]) for m in ("toy-pref", "defective", "adherence")] == [1, -1, 0]
    gap = difference(monitor["defective"], held_out["defective"])
    assert set(gap) == {"value", "low", "high", "n"} and gap["n"] is None  # not a bootstrap
    half = math.hypot(0.03, 0.03)  # independent estimates: half-widths in quadrature
    assert (gap["value"], gap["low"], gap["high"]) == pytest.approx((-0.04, -0.04 - half, -0.04 + half))
