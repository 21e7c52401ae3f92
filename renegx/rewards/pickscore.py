"""PickScore: `logit_scale.exp() · cos(f_image, f_text)` of a fine-tuned CLIP-H (yuvalkirstain/PickScore_v1).

The model is a plain `transformers.CLIPModel`; the tokenizer and the image processor's settings come from
the processor PickScore was trained with (`laion/CLIP-ViT-H-14-laion2B-s32B-b79K`), and the processor's
resize/centre-crop/normalise is rebuilt in torch (`clip_preprocess`). Scores are around 20; a softmax over the
images of one prompt gives preference probabilities.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor

from renegx.rewards.clip_family import CosineReward
from renegx.rewards.loading import fetch_file, load_pretrained, local_folder
from renegx.rewards.preprocess import CLIP_MEAN, CLIP_STD

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


def processor_settings(name: str) -> dict:
    """preprocessor_config.json of a local folder or hub repo (`{}` for "tiny")."""
    if name == "tiny":
        return {}
    folder = local_folder(name, "image processor")
    spec = str(folder / "preprocessor_config.json") if folder else f"{name}/preprocessor_config.json"
    return json.loads(Path(fetch_file(spec, "image processor config")).read_text())


class PickScore(CosineReward):
    """PickScore per image, float32 `(B,)`: `logit_scale.exp() · cos` (the official score, not a probability).

    model: a hub id or local folder of the CLIP model, or "tiny" (seeded random CLIP, byte-level tokenizer).
    processor: a hub id or local folder holding the tokenizer and preprocessor_config.json.
    """

    name = "pickscore"

    def __init__(self, model: str = PICKSCORE_MODEL, processor: str = PICKSCORE_PROCESSOR):
        super().__init__()
        from transformers import CLIPModel, CLIPTokenizer

        if model == "tiny":
            from renegx.tiny import byte_level_clip_tokenizer, tiny_clip_model

            clip, tokenizer, settings = tiny_clip_model(), byte_level_clip_tokenizer(), {}
        else:
            clip = load_pretrained(CLIPModel, model, "PickScore model")
            tokenizer = load_pretrained(CLIPTokenizer, processor, "PickScore tokenizer")
            settings = processor_settings(processor)
        mean, std = settings.get("image_mean", CLIP_MEAN), settings.get("image_std", CLIP_STD)
        self.set_clip(clip, tokenizer, 1.0, mean, std)

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        return self.model.logit_scale.exp().float() * super().score(images, prompts)
