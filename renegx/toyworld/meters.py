"""Analytic defect meters of pictures `(B, 3, H, W)` in [0, 1]: sharpness, noise energy, colour contrast, how
much of the shape lies on the border, how many pixels belong to neither the shape nor the background, and the
two overdone readings: colour past the world's palette and edges that overshoot the colours they join.

Pure functions with no learned parts, so they cannot be hacked the way a learned judge can. The build
calibrates each threshold on clean pictures, rendered and through the VAE (what the generator can at best
produce), at the more lenient of the two, and records beside the thresholds the floor (the share of fresh
clean pictures some meter still flags) and each rendered defect's recall.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from renegx.toyworld.scene import BACKGROUNDS, COLOURS

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


def _core(mask: Tensor, most: int = 8) -> Tensor:
    """`(B, H, W)` bool: the mask's deepest pixels (those that survive the most 3×3 erosions, up to
    `most`): the inside of the shape, away from its edges."""
    core, layer = mask.clone(), mask.float()[:, None]
    for _ in range(most):
        layer = -F.max_pool2d(-F.pad(layer, (1, 1, 1, 1), value=0.0), 3, stride=1)
        inside = layer[:, 0] > 0.5
        if not inside.any():
            break
        keep = inside.flatten(1).any(1)
        core[keep] = inside[keep]
    return core


def shape_colour(images: Tensor) -> Tensor:
    """`(B, 3)` the per-channel median of the shape's deepest pixels (`_core` of `shape_mask`): its own
    colour, not the rim an edge filter draws around it nor the blends along its edge."""
    core = _core(shape_mask(images))
    return torch.stack(
        [
            picture[:, inside].median(dim=1).values
            for picture, inside in zip(images.flatten(2), core.flatten(1), strict=True)
        ]
    )


def _chroma(colours: Tensor) -> Tensor:
    """`(..., 3)` a colour minus its grey (the mean of its channels): hue and saturation, no brightness."""
    return colours - colours.mean(-1, keepdim=True)


def colour_excess(images: Tensor) -> Tensor:
    """`(B,)` how far colour reaches past what the world's palette paints: the shape's colour along the
    chroma of the palette colour nearest in hue, per unit of that colour's chroma, or the background's
    chroma per unit of the most colourful background's, whichever is larger. Near 1 for the palette (its
    jitter included), higher where colour was pushed away from grey."""
    palette = _chroma(torch.tensor(list(COLOURS.values()), dtype=images.dtype) / 255)
    backgrounds = _chroma(torch.tensor(list(BACKGROUNDS.values()), dtype=images.dtype) / 255)
    shape = _chroma(shape_colour(images))
    nearest = palette[(F.normalize(shape, dim=1) @ F.normalize(palette, dim=1).T).argmax(1)]
    along = (shape * nearest).sum(1) / nearest.pow(2).sum(1)
    background = _chroma(background_colour(images)).norm(dim=1) / backgrounds.norm(dim=1).max()
    return torch.maximum(along, background)


def overshoot(images: Tensor) -> Tensor:
    """`(B,)` how far pixels lie beyond the two colours an edge joins (RGB distance past the background on
    one side, past the shape's own colour on the other; the mean of the top 2% of pixels): the dark rim and
    bright halo of an over-sharpened edge. An edge that only blends its two sides, however steep, has none."""
    background = background_colour(images)
    direction = shape_colour(images) - background  # (B, 3)
    offset = images.flatten(2) - background[..., None]
    along = (offset * direction[..., None]).sum(1) / direction.pow(2).sum(1, keepdim=True).clamp_min(1e-6)
    beyond = torch.maximum(-along, along - 1).clamp_min(0) * direction.norm(dim=1, keepdim=True)
    top = max(1, beyond.shape[1] // 50)
    return beyond.topk(top, dim=1).values.mean(1)


def meter_readings(images: Tensor) -> dict[str, Tensor]:
    return {
        "sharpness": sharpness(images),
        "noise_energy": noise_energy(images),
        "contrast": colour_contrast(images),
        "border_contact": border_contact(images),
        "stray_pixels": stray_pixels(images),
        "colour_excess": colour_excess(images),
        "overshoot": overshoot(images),
    }


# defect kind -> (reading, threshold key, True when the defect is a reading *below* the threshold)
DEFECT_METERS = {
    "soft": ("sharpness", "sharpness_min", True),
    "noisy": ("noise_energy", "noise_energy_max", False),
    "flat": ("contrast", "contrast_min", True),
    "cropped": ("border_contact", "border_contact_max", False),
    "cluttered": ("stray_pixels", "stray_pixels_max", False),
    "garish": ("colour_excess", "colour_excess_max", False),
    "haloed": ("overshoot", "overshoot_max", False),
}


# The overdone kinds: readings above anything a crisp, correct picture shows (reward-tuned models' excess).
OVERDONE_KINDS = ("garish", "haloed")
# The kind each rendered defect (scene.DEFECTS, scene.OVERDONE) is drawn to trip: its recall by its own meter.
KIND_OF_DEFECT = {
    "blurry": "soft",
    "noisy": "noisy",
    "faded": "flat",
    "cluttered": "cluttered",
    "cropped": "cropped",
    "oversaturated": "garish",
    "oversharpened": "haloed",
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
    """`(B,)` bool: any defect kind flagged (too soft, noisy, flat, cropped, cluttered, garish or haloed)."""
    return torch.stack(list(defect_flags(readings, thresholds).values())).any(0)
