"""Analytic defect meters: sharpness, noise energy and colour contrast of pictures `(B, 3, H, W)` in [0, 1].

Pure functions with no learned parts, so they cannot be hacked the way a learned judge can. Thresholds are
calibrated by the build on VAE reconstructions of clean pictures (what the generator can at best produce).
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


def meter_readings(images: Tensor) -> dict[str, Tensor]:
    return {
        "sharpness": sharpness(images),
        "noise_energy": noise_energy(images),
        "contrast": colour_contrast(images),
    }


def defective(readings: dict[str, Tensor], thresholds: dict[str, float]) -> Tensor:
    """`(B,)` bool: too soft, too noisy or too flat against calibrated thresholds."""
    return (
        (readings["sharpness"] < thresholds["sharpness_min"])
        | (readings["noise_energy"] > thresholds["noise_energy_max"])
        | (readings["contrast"] < thresholds["contrast_min"])
    )
