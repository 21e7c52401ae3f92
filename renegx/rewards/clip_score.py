"""CLIP score: `scale · cos(image features, text features)` from a `transformers.CLIPModel`.

Training uses scale 1 (the mean cosine is the reward); evaluation reports scale 100. The same class
serves any CLIP-architecture checkpoint in transformers layout (a hub id or a local folder) and the
seeded tiny model (`model="tiny"`) for tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from renegx.models.loading import from_pretrained, source_of
from renegx.rewards.base import Reward, RewardError
from renegx.rewards.preprocess import CLIP_MEAN, CLIP_STD, clip_preprocess


def load_clip(model: str):
    """(`CLIPModel`, `CLIPTokenizer`, preprocessor config dict) from "tiny", a local folder or a hub id."""
    from transformers import CLIPModel, CLIPTokenizer

    if model == "tiny":
        from renegx.tiny import byte_level_clip_tokenizer, tiny_clip_model

        return tiny_clip_model(), byte_level_clip_tokenizer(), {}
    what = "CLIP reward model"
    source, local_only = source_of(model, RewardError, what)
    clip = from_pretrained(CLIPModel, model, what, RewardError, source=(source, local_only))
    tokenizer = from_pretrained(CLIPTokenizer, model, what, RewardError, source=(source, local_only))
    return clip, tokenizer, _preprocessor_config(source, local_only)


def _preprocessor_config(source: str, local_only: bool) -> dict:
    """preprocessor_config.json of a folder or hub repo, or {} when it has none."""
    if Path(source).is_dir():
        path = Path(source, "preprocessor_config.json")
        return json.loads(path.read_text()) if path.is_file() else {}
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(source, "preprocessor_config.json", local_files_only=local_only)
    except OSError:
        return {}
    return json.loads(Path(path).read_text())


class ClipScore(Reward):
    """`scale · cos(f_image, f_text)` per image, float32 `(B,)`.

    model: a hub id (e.g. "openai/clip-vit-large-patch14"), a local folder in transformers layout (model
    and tokenizer files, optionally preprocessor_config.json for mean/std), or "tiny".
    scale: multiplies the cosine; 1 for training, 100 for the usual reported CLIP score.
    """

    name = "clip"

    def __init__(self, model: str = "openai/clip-vit-large-patch14", scale: float = 1.0):
        super().__init__()
        self.model, self.tokenizer, processor = load_clip(model)
        self.scale = float(scale)
        self.image_size = int(self.model.config.vision_config.image_size)
        self.register_buffer("mean", torch.tensor(processor.get("image_mean", CLIP_MEAN)), persistent=False)
        self.register_buffer("std", torch.tensor(processor.get("image_std", CLIP_STD)), persistent=False)
        max_positions = self.model.config.text_config.max_position_embeddings
        self.max_length = min(self.tokenizer.model_max_length, max_positions)
        self.text_features: dict[str, Tensor] = {}
        self.freeze()

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        text = self.encode_text(prompts).to(images.device)
        return self.scale * (self.encode_images(images) * text).sum(-1)

    def encode_images(self, images: Tensor) -> Tensor:
        """Unit-norm float32 image features `(B, P)` for `images` `(B, 3, H, W)` in [0, 1], with grad."""
        dtype = self.model.visual_projection.weight.dtype
        pixel_values = clip_preprocess(images, self.image_size, self.mean, self.std).to(dtype)
        pooled = self.model.vision_model(pixel_values=pixel_values).pooler_output
        return F.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> Tensor:
        """Unit-norm float32 text features `(B, P)`; each distinct prompt is encoded once and cached.

        One prompt at a time, so that its features do not depend on the batch it first came in (exact resume).
        """
        for prompt in dict.fromkeys(p for p in prompts if p not in self.text_features):
            device = self.model.text_projection.weight.device
            tokens = self.tokenizer(
                [prompt],
                padding="max_length",
                max_length=self.max_length,
                truncation=True,
                return_tensors="pt",
            )
            tokens = tokens.to(device)
            pooled = self.model.text_model(
                input_ids=tokens.input_ids, attention_mask=tokens.attention_mask
            ).pooler_output
            self.text_features[prompt] = F.normalize(self.model.text_projection(pooled).float(), dim=-1)[0]
        return torch.stack([self.text_features[p] for p in prompts])
