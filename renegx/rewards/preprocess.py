"""Differentiable image preprocessing for reward models, rebuilt in torch.

`clip_preprocess` reproduces `transformers.CLIPImageProcessor` (resize the shortest side with bicubic,
centre crop, normalise) on float tensors in [0, 1], so gradients flow back to the images. The official
processor resizes uint8 images in PIL; tests pin the (small) difference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def shortest_edge_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after resizing the shortest side to `size`, rounded like transformers does."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def resize_shortest_center_crop(
    images: Tensor, size: int, interpolation: str = "bicubic", antialias: bool = True
) -> Tensor:
    """Resize `images` `(B, C, H, W)` so the shortest side is `size`, then centre-crop `size × size`.

    No resampling happens when the shortest side already is `size` (the crop alone is exact).
    Bicubic may overshoot [0, 1] slightly; the values are not clamped, so no gradient is cut.
    """
    height, width = images.shape[-2:]
    new_height, new_width = shortest_edge_size(height, width, size)
    if (new_height, new_width) != (height, width):
        smooth = interpolation in ("bilinear", "bicubic")
        options = {"align_corners": False, "antialias": antialias} if smooth else {}
        images = F.interpolate(images, size=(new_height, new_width), mode=interpolation, **options)
    top, left = (new_height - size) // 2, (new_width - size) // 2
    return images[..., top : top + size, left : left + size]


def normalize(images: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """`(images - mean) / std` per channel; `images` `(B, C, H, W)`, `mean`/`std` of length C."""
    mean = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    return (images - mean) / std


def clip_preprocess(
    images: Tensor,
    size: int,
    mean: Sequence[float] | Tensor = CLIP_MEAN,
    std: Sequence[float] | Tensor = CLIP_STD,
) -> Tensor:
    """`images` `(B, 3, H, W)` in [0, 1] → CLIP `pixel_values` `(B, 3, size, size)`, differentiable."""
    return normalize(resize_shortest_center_crop(images, size), mean, std)
