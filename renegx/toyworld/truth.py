"""Ground truth of toy-world pictures: what the analytic meters and the attribute classifier read.

A learned judge can be pleased by changes a person would not call better; these readings cannot be trained
against. For each picture: the defect kinds the meters flag (soft, noisy, flat, cropped, cluttered, and the
overdone ones, garish and haloed; any of them makes it defective) and, for every attribute its prompt names,
whether the picture shows it (shape, colour and background from the attribute classifier, size from the
shape's area, position from its centre of mass). A picture adheres when it shows every attribute its prompt
names that the generator can be asked for: shape, colour, background and size. Position is read and
reported beside adherence, not in it: the toy generator ignores position words (its noise decides where the
shape goes), so no negative can move it. `truth_table` compares negatives drawn from the same noise: each
one's shares and its paired difference to a baseline with a 95% interval that resamples prompts.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from renegx.evaluate.protocol import cluster_bootstrap, format_estimate, mean_delta
from renegx.toyworld.meters import (
    DEFECT_METERS,
    centroid,
    defect_flags,
    defective,
    meter_readings,
    shape_mask,
)
from renegx.toyworld.networks import at_toy_resolution
from renegx.toyworld.render import shape_area
from renegx.toyworld.scene import POSITIONS, SIZES, named_attributes

DEFECT_KINDS = tuple(DEFECT_METERS)
ADHERENCE = ("shape", "colour", "background", "size")  # what a picture must show to adhere
ATTRIBUTES = (*ADHERENCE, "position")  # every attribute read; position is reported beside adherence
HEADLINE = ("defective", "adherence")
# The radius (a fraction of the side) between the largest small shape and the smallest large one.
_SIZE_SPLIT = float(np.sqrt(SIZES["small"][1] * SIZES["large"][0]))


def read_positions(images: Tensor) -> list[str]:
    """The named position (`POSITIONS`) nearest to each picture's shape centre."""
    anchors = torch.tensor([xy for xy, _ in POSITIONS.values()], dtype=torch.float32)
    nearest = torch.cdist(centroid(images.float()), anchors).argmin(1)
    return [list(POSITIONS)[int(i)] for i in nearest]


def read_sizes(images: Tensor, shapes: list[str]) -> list[str]:
    """The size per picture, small or large: the radius a shape of the given kind (the one the picture
    shows) needs to cover the shape mask's area, against the radius between the two sizes' ranges."""
    covered = shape_mask(images.float()).float().mean((1, 2))
    return [
        "large" if float(np.sqrt(area / shape_area(shape))) >= _SIZE_SPLIT else "small"
        for area, shape in zip(covered.tolist(), shapes, strict=True)
    ]


@torch.no_grad()
def read_pictures(
    images: Tensor, prompts: list[str], thresholds: dict[str, float], classifier
) -> dict[str, np.ndarray]:
    """Per picture `(N,)` arrays: one bool per flagged defect kind, `defective`, `<attribute>_correct`
    (NaN where the prompt does not name it) and `adherence` (every named attribute of `ADHERENCE` shown)."""
    images = at_toy_resolution(images.float().clamp(0, 1))
    readings = meter_readings(images)
    out = {kind: flag.numpy().astype(np.float64) for kind, flag in defect_flags(readings, thresholds).items()}
    out["defective"] = defective(readings, thresholds).numpy().astype(np.float64)
    shown = classifier.describe(images)
    sizes = read_sizes(images, [row["shape"] for row in shown])
    for row, position, size in zip(shown, read_positions(images), sizes, strict=True):
        row.update(position=position, size=size)
    asked = [named_attributes(p) for p in prompts]
    for attribute in ATTRIBUTES:
        out[f"{attribute}_correct"] = np.array(
            [
                float(a[attribute] == s[attribute]) if attribute in a else np.nan
                for a, s in zip(asked, shown, strict=True)
            ]
        )
    out["adherence"] = np.array(
        [float(all(a[k] == s[k] for k in a if k in ADHERENCE)) for a, s in zip(asked, shown, strict=True)]
    )
    return out


def load_reader():
    """`read(images, prompts) -> readings` with the shipped thresholds and classifier."""
    from renegx.toyworld import load_attribute_net, meter_thresholds

    thresholds, classifier = meter_thresholds(), load_attribute_net("classifier")
    return lambda images, prompts: read_pictures(images, prompts, thresholds, classifier)


def _share(values: np.ndarray) -> float:
    known = values[~np.isnan(values)]
    return float(known.mean()) if known.size else float("nan")


def truth_table(
    readings: dict[str, dict[str, np.ndarray]], prompt_ids: np.ndarray, baseline: str = "null"
) -> dict[str, dict]:
    """Negative → {measure: share, `<measure>_minus_<baseline>`: estimate} over every measure of
    `read_pictures`, and `<headline>_ci`: the estimate of each headline share itself. An estimate is
    `Estimate.to_json()`; differences are paired (same prompts and seeds); intervals resample prompts."""
    table = {}
    for name, by_measure in readings.items():
        row = {measure: _share(values) for measure, values in by_measure.items()}
        for measure in (m for m in HEADLINE if m in by_measure):
            share = cluster_bootstrap(by_measure[measure], prompt_ids)
            row[f"{measure}_ci"] = share.to_json()
        if name != baseline:
            for measure, values in by_measure.items():
                base = readings[baseline][measure]
                keep = ~(np.isnan(values) | np.isnan(base))
                if keep.any():
                    estimate = mean_delta(values[keep], base[keep], clusters=prompt_ids[keep])
                    row[f"{measure}_minus_{baseline}"] = estimate.to_json()
        table[name] = row
    return table


def format_truth_table(table: dict[str, dict], floor: float | None = None, baseline: str = "null") -> str:
    """The headline (defective share, adherence) with paired intervals, then the breakdowns."""
    columns = [*HEADLINE, *DEFECT_KINDS, *(f"{a}_correct" for a in ATTRIBUTES)]
    short = {f"{a}_correct": a for a in ATTRIBUTES}
    lines = [
        "ground truth "
        + (f"(meter floor: {floor:.3f} of fresh clean reconstructions flagged) " if floor is not None else "")
        + f"— adherence: {', '.join(ADHERENCE)}; position beside it (the generator ignores position words)"
    ]
    lines.append(f"{'negative':<14}" + "".join(f"{short.get(c, c):>11}" for c in columns))
    for name, row in table.items():
        lines.append(f"{name:<14}" + "".join(f"{row.get(c, float('nan')):>11.3f}" for c in columns))
    for name, row in table.items():
        cells = [
            f"{measure} {format_estimate(row[key], 3)}"
            for measure in HEADLINE
            if (key := f"{measure}_minus_{baseline}") in row
        ]
        if cells:
            lines.append(f"{name} − {baseline}: " + "   ".join(cells))
    return "\n".join(lines)


def meter_floor() -> float | None:
    """The share of fresh clean VAE reconstructions (none used to calibrate) the shipped meters flag: what the
    generator's best pictures are flagged at (None for weights without it)."""
    from renegx.toyworld import meter_thresholds

    return meter_thresholds().get("floor")
