"""LAION aesthetic predictor v2: a linear MLP on the L2-normalised CLIP ViT-L/14 image embedding.

`score = MLP(normalize(clip.get_image_features(x)))` with the MLP 768→1024→128→64→16→1 of
`sac+logos+ava1-l14-linearMSE.pth` (Apache-2.0), loaded with `torch.load(weights_only=True)` or from a
safetensors conversion. Scores are on the AVA 1–10 scale (about 4–7 for ordinary images). Prompts are
accepted and ignored: the predictor looks at the image only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from renegx.rewards.base import Reward, RewardError
from renegx.rewards.clip_family import clip_image_features
from renegx.rewards.heads import REAL_WIDTHS, TINY_WIDTHS, LinearHead
from renegx.rewards.loading import fetch_file, load_pretrained, load_state_dict, load_weights
from renegx.rewards.pickscore import processor_settings
from renegx.rewards.preprocess import CLIP_MEAN, CLIP_STD, clip_preprocess

AESTHETIC_CLIP = "openai/clip-vit-large-patch14"
AESTHETIC_HEAD = "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac+logos+ava1-l14-linearMSE.pth"


def tiny_aesthetic_head(input_size: int = 16, seed: int = 11) -> LinearHead:
    """A seeded random head of the real layout with small widths."""
    torch.manual_seed(seed)
    return LinearHead(input_size, TINY_WIDTHS)


class LaionAesthetic(Reward):
    """Aesthetic score per image, float32 `(B,)`.

    model: the CLIP ViT-L/14 (hub id or local folder in transformers layout), or "tiny".
    head: the MLP weights: a local `.pth`/`.safetensors`, a hub file `owner/name/file`, or a URL (cached in
        `~/.cache/renegx`, fetched only when online); ignored for "tiny".
    """

    name = "aesthetic"

    def __init__(self, model: str = AESTHETIC_CLIP, head: str = AESTHETIC_HEAD):
        super().__init__()
        from transformers import CLIPModel

        if model == "tiny":
            from renegx.tiny import tiny_clip_model

            self.model = tiny_clip_model()
            self.head = tiny_aesthetic_head(self.model.config.projection_dim)
            settings = {}
        else:
            self.model = load_pretrained(CLIPModel, model, "aesthetic CLIP model")
            path = fetch_file(head, "aesthetic head")
            weights = load_state_dict(path, "aesthetic head")
            projection = self.model.config.projection_dim
            input_size, widths = LinearHead.widths_of(weights)
            if input_size and input_size != projection:
                raise RewardError(
                    f"aesthetic head {path} takes {input_size}-d CLIP features; {model} gives {projection}-d"
                )
            self.head = LinearHead(projection, widths or REAL_WIDTHS)
            load_weights(self.head, weights, f"aesthetic head {path}")
            settings = processor_settings(model)
        self.image_size = int(self.model.config.vision_config.image_size)
        mean, std = settings.get("image_mean", CLIP_MEAN), settings.get("image_std", CLIP_STD)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)
        self.freeze()

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        features = clip_image_features(
            self.model, clip_preprocess(images, self.image_size, self.mean, self.std)
        )
        head_dtype = self.head.layers[0].weight.dtype
        return self.head(features.to(head_dtype)).squeeze(-1).float()
