"""`CosineReward`: `scale · cos(f_image, f_text)` on a `transformers.CLIPModel` (HPSv2, PickScore).

A subclass builds the model and tokenizer its own way, calls `set_clip(...)`, and overrides `preprocess` when
its official evaluation transform is not CLIP's resize-shortest/centre-crop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from renegx.rewards.base import Reward
from renegx.rewards.preprocess import CLIP_MEAN, CLIP_STD, clip_preprocess


def clip_image_features(model, pixel_values: Tensor) -> Tensor:
    """Unit-norm float32 projected image features `(B, P)` of a `CLIPModel`, with grad."""
    pixel_values = pixel_values.to(model.visual_projection.weight.dtype)
    pooled = model.vision_model(pixel_values=pixel_values).pooler_output
    return F.normalize(model.visual_projection(pooled).float(), dim=-1)


class CosineReward(Reward):
    """`scale · cos(f_image, f_text)`, float32 `(B,)`; text features are computed once per distinct prompt."""

    # Whether special-token strings in a prompt are read as plain text (open_clip does; HF processors don't).
    split_special_tokens = False

    def set_clip(
        self,
        model,
        tokenizer,
        scale: float = 1.0,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        self.model, self.tokenizer, self.scale = model, tokenizer, float(scale)
        self.image_size = int(model.config.vision_config.image_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)
        max_positions = model.config.text_config.max_position_embeddings
        self.max_length = min(tokenizer.model_max_length, max_positions)
        self.text_features: dict[str, Tensor] = {}
        self.freeze()

    def preprocess(self, images: Tensor) -> Tensor:
        """`images` `(B, 3, H, W)` in [0, 1] → `pixel_values` `(B, 3, S, S)`, differentiable."""
        return clip_preprocess(images, self.image_size, self.mean, self.std)

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        text = self.encode_text(prompts).to(images.device)
        return self.scale * (self.encode_images(images) * text).sum(-1)

    def encode_images(self, images: Tensor) -> Tensor:
        """Unit-norm float32 image features `(B, P)` for `images` `(B, 3, H, W)` in [0, 1], with grad."""
        return clip_image_features(self.model, self.preprocess(images))

    def tokenize(self, prompts: list[str]):
        """Token ids and attention mask `(B, max_length)`, padded to the model's context length."""
        return self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
            split_special_tokens=self.split_special_tokens,
        )

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> Tensor:
        """Unit-norm float32 text features `(B, P)`; each distinct prompt is encoded once and cached.

        One prompt at a time, so that its features do not depend on the batch it first came in (exact resume).
        """
        for prompt in dict.fromkeys(p for p in prompts if p not in self.text_features):
            tokens = self.tokenize([prompt]).to(self.model.text_projection.weight.device)
            pooled = self.model.text_model(
                input_ids=tokens.input_ids, attention_mask=tokens.attention_mask
            ).pooler_output
            self.text_features[prompt] = F.normalize(self.model.text_projection(pooled).float(), dim=-1)[0]
        return torch.stack([self.text_features[p] for p in prompts])
