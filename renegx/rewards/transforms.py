"""The two other official evaluation transforms, rebuilt on float tensors so gradients reach the images.

- `resize_longest_pad`: open_clip's `ResizeMaxSize` as HPSv2 uses it (`light_augmentation=True`): after
  `ToTensor`, the longest side is resized to `size` (bicubic, antialiased, sizes rounded with Python's
  `round`), then the image is zero-padded to a square (fill 0 in [0, 1] space, i.e. before normalisation),
  the odd pixel going to the bottom/right.
- `resize_center_crop_torchvision`: torchvision's `Resize(size)` + `CenterCrop(size)` as BLIP/ImageReward
  use it; as `clip_preprocess` but with torchvision's rounded crop offset, `round((H − size) / 2)`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from renegx.rewards.preprocess import shortest_edge_size


def _bicubic(images: Tensor, height: int, width: int) -> Tensor:
    if (height, width) == tuple(images.shape[-2:]):
        return images
    return F.interpolate(images, size=(height, width), mode="bicubic", align_corners=False, antialias=True)


def resize_longest_pad(images: Tensor, size: int) -> Tensor:
    """`images` `(B, C, H, W)` → `(B, C, size, size)`: longest side to `size`, then zero-pad to a square.

    open_clip skips both steps when the longest side already is `size`, so a non-square image that size stays
    non-square there and breaks its ViT; here it is padded to the square the model needs.
    """
    height, width = images.shape[-2:]
    scale = size / max(height, width)
    new_height, new_width = round(height * scale), round(width * scale)
    images = _bicubic(images, new_height, new_width)
    pad_h, pad_w = size - new_height, size - new_width
    if pad_h or pad_w:
        images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)
    return images


def resize_center_crop_torchvision(images: Tensor, size: int) -> Tensor:
    """`images` `(B, C, H, W)` → `(B, C, size, size)`: shortest side to `size` (bicubic), then centre crop."""
    new_height, new_width = shortest_edge_size(*images.shape[-2:], size)
    images = _bicubic(images, new_height, new_width)
    top, left = int(round((new_height - size) / 2.0)), int(round((new_width - size) / 2.0))
    return images[..., top : top + size, left : left + size]
