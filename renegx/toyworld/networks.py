"""The toy world's own networks besides the generator: the independent judge and the attribute network.

The preference judge (the training reward) is a `transformers.CLIPModel` read by `renegx.rewards.ClipScore`.
The independent judge differs from it on purpose: a convolutional image tower, a bag-of-words text tower, a
different seed and a different data split. The attribute network reads shape, colour, background and defects
off a picture; one copy is the evaluator's classifier, another (other seed and data) the samplers' captioner.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from renegx.toyworld.render import RESOLUTION
from renegx.toyworld.scene import BACKGROUNDS, COLOURS, DEFECTS, SHAPES

HEADS = {"shape": SHAPES, "colour": tuple(COLOURS), "background": tuple(BACKGROUNDS)}


def at_toy_resolution(images: Tensor) -> Tensor:
    """Pictures `(B, 3, H, W)` at the 32×32 the toy networks read (unchanged when already there)."""
    if images.shape[-2:] == (RESOLUTION, RESOLUTION):
        return images
    return F.interpolate(images.float(), size=(RESOLUTION, RESOLUTION), mode="bilinear", antialias=True)


def _conv_tower(width: int) -> nn.Sequential:
    """32×32 RGB → `(B, 2·width)` features."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.GELU(),
        nn.Conv2d(width, width, 3, padding=1, stride=2),
        nn.GroupNorm(8, width),
        nn.GELU(),
        nn.Conv2d(width, 2 * width, 3, padding=1, stride=2),
        nn.GroupNorm(8, 2 * width),
        nn.GELU(),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1, stride=2),
        nn.GELU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


class IndependentJudge(nn.Module):
    """`score(images, token_ids)`: cosine of a CNN image embedding and a mean-of-words text embedding, ×10."""

    def __init__(self, vocab_size: int, width: int = 32, dim: int = 64):
        super().__init__()
        self.config = {"vocab_size": vocab_size, "width": width, "dim": dim}
        self.image_tower = _conv_tower(width)
        self.image_head = nn.Sequential(nn.Linear(2 * width, 128), nn.GELU(), nn.Linear(128, dim))
        self.words = nn.EmbeddingBag(vocab_size, dim, mode="mean")
        self.text_head = nn.Sequential(nn.Linear(dim, 128), nn.GELU(), nn.Linear(128, dim))

    def encode_images(self, images: Tensor) -> Tensor:
        return F.normalize(self.image_head(self.image_tower(images * 2 - 1)), dim=-1)

    def encode_text(self, token_ids: list[list[int]]) -> Tensor:
        flat = torch.tensor([t for ids in token_ids for t in ids], dtype=torch.long)
        offsets = torch.tensor([0] + [len(ids) for ids in token_ids[:-1]]).cumsum(0)
        return F.normalize(
            self.text_head(self.words(flat.to(self.words.weight.device), offsets.to(flat.device))), dim=-1
        )

    def forward(self, images: Tensor, token_ids: list[list[int]]) -> Tensor:
        return 10.0 * (self.encode_images(images) * self.encode_text(token_ids)).sum(-1)


class AttributeNet(nn.Module):
    """Logits per attribute head (shape, colour, background) and one logit per defect."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.config = {"width": width}
        self.tower = _conv_tower(width)
        self.heads = nn.ModuleDict(
            {name: nn.Linear(2 * width, len(values)) for name, values in HEADS.items()}
        )
        self.defects = nn.Linear(2 * width, len(DEFECTS))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        features = self.tower(images * 2 - 1)
        logits = {name: head(features) for name, head in self.heads.items()}
        logits["defects"] = self.defects(features)
        return logits

    @torch.no_grad()
    def describe(self, images: Tensor) -> list[dict]:
        """Per picture: the most likely shape/colour/background and the defects with probability > 0.5."""
        logits = self(images)
        rows = []
        for i in range(images.shape[0]):
            row = {name: HEADS[name][int(logits[name][i].argmax())] for name in HEADS}
            row["defects"] = [
                d for d, p in zip(DEFECTS, logits["defects"][i].sigmoid().tolist(), strict=True) if p > 0.5
            ]
            rows.append(row)
        return rows


def words_of(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids without start/end markers: the independent judge's bag of words."""
    return [tokenizer(t).input_ids[1:-1] or [tokenizer.eos_token_id] for t in texts]


def save_module(module: nn.Module, folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(module.config, indent=1))


def load_module(cls, folder: Path) -> nn.Module:
    module = cls(**json.loads((folder / "config.json").read_text()))
    module.load_state_dict(load_file(str(folder / "model.safetensors")))
    return module.eval().requires_grad_(False)
