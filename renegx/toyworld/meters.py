"""Analytic defect meters of pictures `(B, 3, H, W)` in [0, 1]: sharpness, noise energy, colour contrast, how
much of the shape lies on the border and how many pixels belong to neither the shape nor the background.

Pure functions with no learned parts, so they cannot be hacked the way a learned judge can. Thresholds are
calibrated by the build on VAE reconstructions of clean pictures (what the generator can at best produce); the
share of those clean reconstructions a meter still flags is its floor, recorded beside the thresholds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_LUMA = (0.299, 0.587, 0.114)


def luminance(images: Tensor) -> Tensor:
    weights = torch.tensor(_LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def _box3(x: Tensor) -> Tensor:
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


def colour_contrast(images: Tensor) -> Tensor:
    """`(B,)` how far the most distinct 4% of pixels are from the median colour (RGB distance): the shape
    against its background; low for washed-out pictures whatever the colours."""
    flat = images.flatten(2)
    distance = (flat - flat.median(dim=2, keepdim=True).values).norm(dim=1)
    return torch.quantile(distance, 0.96, dim=1)


def sharpness(images: Tensor) -> Tensor:
    """`(B,)` the strongest edges (mean RGB gradient norm of the top 2% of pixels) per unit of contrast:
    low for blurred pictures, unaffected by fading."""
    gx = images[..., :, 1:] - images[..., :, :-1]
    gy = images[..., 1:, :] - images[..., :-1, :]
    magnitude = (gx[..., :-1, :].pow(2) + gy[..., :, :-1].pow(2)).sum(1).sqrt().flatten(1)
    top = max(1, magnitude.shape[1] // 50)
    return magnitude.topk(top, dim=1).values.mean(1) / colour_contrast(images).clamp_min(0.05)


def noise_energy(images: Tensor) -> Tensor:
    """`(B,)` RMS of what a 3×3 box filter removes on the flattest half of the picture (texture, no edges)."""
    residual = (images - _box3(images)).pow(2).mean(1).flatten(1)
    local_edges = (_box3(luminance(images)) - luminance(images)).abs().flatten(1)
    flat = local_edges <= local_edges.median(dim=1, keepdim=True).values
    return ((residual * flat).sum(1) / flat.sum(1).clamp_min(1)).sqrt()


def background_colour(images: Tensor) -> Tensor:
    """`(B, 3)` the median colour of the one-pixel border ring: the background, even when a shape or a
    stroke touches part of the border."""
    ring = torch.cat(
        [images[..., 0, :], images[..., -1, :], images[..., 1:-1, 0], images[..., 1:-1, -1]], dim=-1
    )
    return ring.median(dim=-1).values


def shape_mask(images: Tensor) -> Tensor:
    """`(B, H, W)` bool: pixels at least half as far from the background colour as the most distinct 4%
    (the shape, whatever its contrast; never empty)."""
    distance = (images - background_colour(images)[..., None, None]).norm(dim=1)
    top = torch.quantile(distance.flatten(1), 0.96, dim=1).clamp_min(1e-6)
    return distance >= 0.5 * top[:, None, None]


def centroid(images: Tensor) -> Tensor:
    """`(B, 2)` the shape mask's centre of mass as (x, y) fractions of the side."""
    mask = shape_mask(images).float()
    height, width = mask.shape[-2:]
    ys = (torch.arange(height, dtype=mask.dtype) + 0.5) / height
    xs = (torch.arange(width, dtype=mask.dtype) + 0.5) / width
    total = mask.sum((1, 2)).clamp_min(1)
    return torch.stack([(mask * xs).sum((1, 2)) / total, (mask * ys[:, None]).sum((1, 2)) / total], dim=1)


def border_contact(images: Tensor) -> Tensor:
    """`(B,)` shape pixels on the border ring per unit of the shape's size (√area): 0 for a shape inside the
    frame, near 2 for one cut in half by an edge."""
    mask = shape_mask(images)
    ring = torch.zeros_like(mask[0])
    ring[0, :] = ring[-1, :] = ring[:, 0] = ring[:, -1] = True
    return (mask & ring).sum((1, 2)) / mask.sum((1, 2)).clamp_min(1).sqrt()


def stray_pixels(images: Tensor, tolerance: float = 0.12) -> Tensor:
    """`(B,)` share of pixels farther than `tolerance` (RGB distance) from every blend of the background and
    the shape's colour: strokes and smudges of other colours. Anti-aliased edges are such blends and do not
    count."""
    background = background_colour(images)
    mask = shape_mask(images)
    flat = images.flatten(2)  # (B, 3, N)
    inside = mask.flatten(1).float()
    shape = (flat * inside[:, None]).sum(2) / inside.sum(1, keepdim=True).clamp_min(1)
    direction = shape - background  # (B, 3)
    offset = flat - background[..., None]
    along = (offset * direction[..., None]).sum(1) / direction.pow(2).sum(1, keepdim=True).clamp_min(1e-6)
    nearest = background[..., None] + along.clamp(0, 1)[:, None] * direction[..., None]
    return ((flat - nearest).norm(dim=1) > tolerance).float().mean(1)


def meter_readings(images: Tensor) -> dict[str, Tensor]:
    return {
        "sharpness": sharpness(images),
        "noise_energy": noise_energy(images),
        "contrast": colour_contrast(images),
        "border_contact": border_contact(images),
        "stray_pixels": stray_pixels(images),
    }


# defect kind -> (reading, threshold key, True when the defect is a reading *below* the threshold)
DEFECT_METERS = {
    "soft": ("sharpness", "sharpness_min", True),
    "noisy": ("noise_energy", "noise_energy_max", False),
    "flat": ("contrast", "contrast_min", True),
    "cropped": ("border_contact", "border_contact_max", False),
    "cluttered": ("stray_pixels", "stray_pixels_max", False),
}


def defect_flags(readings: dict[str, Tensor], thresholds: dict[str, float]) -> dict[str, Tensor]:
    """Defect kind → `(B,)` bool against calibrated thresholds; kinds whose threshold is absent are skipped
    (weights calibrated before that meter existed)."""
    flags = {}
    for kind, (reading, key, below) in DEFECT_METERS.items():
        if key in thresholds:
            value = readings[reading]
            flags[kind] = value < thresholds[key] if below else value > thresholds[key]
    return flags


def defective(readings: dict[str, Tensor], thresholds: dict[str, float]) -> Tensor:
    """`(B,)` bool: any defect kind flagged (too soft, noisy, flat, cropped or cluttered)."""
    return torch.stack(list(defect_flags(readings, thresholds).values())).any(0)
