"""Side metrics that catch reward hacking without a judge: saturation, colourfulness and seed diversity.

A negative that games a reward often pushes images towards oversaturated colour, or makes every seed of a
prompt look alike; these numbers move when that happens, whatever the judges say. Pure numpy on images
`(H, W, 3)` float in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np

# Images are compared for diversity at this size: enough for layout and colour, cheap for thousands.
DIVERSITY_SIZE = 64


def saturation(image: np.ndarray) -> float:
    """Mean HSV saturation `(max − min) / max` over pixels (0 for a black pixel), in [0, 1]."""
    high, low = image.max(axis=-1), image.min(axis=-1)
    ratio = np.divide(high - low, high, out=np.zeros_like(high, dtype=np.float64), where=high > 0)
    return float(ratio.mean())


def colourfulness(image: np.ndarray) -> float:
    """Hasler & Süsstrunk (2003) colourfulness on the 0–255 scale: `σ_rgyb + 0.3 μ_rgyb`
    (0 for grey; about 15 "slightly", 33 "moderately", 59 "quite", 82 "highly" colourful)."""
    rgb = image.astype(np.float64) * 255.0
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg = red - green
    yb = 0.5 * (red + green) - blue
    spread = np.hypot(rg.std(), yb.std())
    centre = np.hypot(rg.mean(), yb.mean())
    return float(spread + 0.3 * centre)


def seed_diversity(images: Sequence[np.ndarray]) -> float:
    """Mean pairwise RMS pixel distance between the images of one prompt drawn with different seeds.

    0 when every seed gives the same image; images must share one shape (see `DIVERSITY_SIZE`).
    """
    if len(images) < 2:
        raise ValueError(f"seed diversity needs at least two images, got {len(images)}")
    distances = [
        float(np.sqrt(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))
        for a, b in combinations(images, 2)
    ]
    return float(np.mean(distances))
