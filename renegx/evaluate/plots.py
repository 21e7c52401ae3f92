"""The report's pictures as PNG bytes: score distributions, win-rate bars with intervals, image grids.

matplotlib with the Agg backend (no display needed); each function builds one figure and closes it.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DPI = 100


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def score_distributions(judge: str, distributions: dict[str, list[float]]) -> bytes:
    """Box plots (mean marked) of one judge's scores, one box per negative."""
    labels = [label for label, values in distributions.items() if values]
    figure, axes = plt.subplots(figsize=(7, 0.6 * len(labels) + 1.4))
    axes.boxplot([distributions[label] for label in labels], orientation="horizontal", showmeans=True)
    axes.set_yticks(range(1, len(labels) + 1), labels)
    axes.invert_yaxis()
    axes.set_xlabel(f"{judge} score")
    axes.set_title(f"{judge}: score per image")
    axes.grid(axis="x", alpha=0.3)
    return _png(figure)


def win_rate_bars(baseline: str, rates: dict[str, dict[str, dict]]) -> bytes:
    """Win rate over the baseline per judge (groups) and negative (bars), with 95% interval whiskers.

    `rates[judge][negative]` is an `Estimate.to_json()` of the win rate.
    """
    judges = list(rates)
    negatives = list(dict.fromkeys(n for per_judge in rates.values() for n in per_judge))
    width = 0.8 / max(1, len(negatives))
    figure, axes = plt.subplots(figsize=(max(5, 1.6 * len(judges) + 2), 3.6))
    for offset, negative in enumerate(negatives):
        xs, values, errors = [], [], [[], []]
        for position, judge in enumerate(judges):
            estimate = rates[judge].get(negative)
            if estimate is None:
                continue
            xs.append(position + (offset - (len(negatives) - 1) / 2) * width)
            values.append(100 * estimate["value"])
            errors[0].append(100 * (estimate["value"] - estimate["low"]))
            errors[1].append(100 * (estimate["high"] - estimate["value"]))
        axes.bar(xs, values, width, yerr=errors, capsize=3, label=negative)
    axes.axhline(50, color="black", linewidth=0.8, linestyle="--")
    axes.set_xticks(range(len(judges)), judges)
    axes.set_ylim(0, 100)
    axes.set_ylabel(f"% wins over {baseline}")
    axes.set_title(f"Paired win rate over {baseline} (95% CI)")
    axes.legend(fontsize="small")
    return _png(figure)


def estimates_over_steps(series: dict[str, list[tuple[int, dict]]], title: str) -> bytes:
    """One panel per estimate: its value against the training step with its 95% interval as whiskers, and
    zero (no difference) as a dashed line. `series[name]` is `[(step, Estimate.to_json()), ...]`."""
    columns = min(3, max(1, len(series)))
    rows = -(-len(series) // columns)
    figure, grid = plt.subplots(rows, columns, figsize=(4 * columns, 2.6 * rows), squeeze=False)
    for axes, (name, points) in zip(grid.flat, series.items(), strict=False):
        steps = [step for step, _ in points]
        values = [estimate["value"] for _, estimate in points]
        errors = [
            [e["value"] - e["low"] for _, e in points],
            [e["high"] - e["value"] for _, e in points],
        ]
        axes.errorbar(steps, values, yerr=errors, marker="o", capsize=3)
        axes.axhline(0, color="black", linewidth=0.8, linestyle="--")
        axes.set_title(name, fontsize="small")
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
    for axes in list(grid.flat)[len(series) :]:
        axes.set_visible(False)
    figure.suptitle(title)
    figure.tight_layout()
    return _png(figure)
