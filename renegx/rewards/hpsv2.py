"""HPSv2 (v2.0 and v2.1): the open_clip ViT-H-14 with the HPS checkpoint, run on `transformers.CLIPModel`.

Score = cosine of the L2-normalised image and text features, no logit scale (about 0.2–0.35; the benchmark
reports ×100, `scale=100`). The open_clip state dict in `HPS_v2*_compressed.pt` maps 1:1 onto `CLIPModel`
(`open_clip_to_transformers`), so no open_clip and no torchvision are needed. Preprocessing is the official
evaluation transform, `resize_longest_pad` (longest side to 224, bicubic antialiased, zero-pad to square),
then CLIP mean/std.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from renegx.rewards.base import RewardError
from renegx.rewards.clip_family import CosineReward
from renegx.rewards.loading import build_empty, fetch_file, load_pretrained, load_state_dict, load_weights
from renegx.rewards.preprocess import normalize
from renegx.rewards.transforms import resize_longest_pad

HPS_REPO = "xswu/HPSv2"
HPS_FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
HPS_TOKENIZER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"

# open_clip model configs (the JSON open_clip itself uses); mlp_ratio defaults to 4.
ARCHITECTURES = {
    "ViT-H-14": {
        "embed_dim": 1024,
        "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24},
    },
    # The same family in miniature, over the byte-level tokenizer of renegx.tiny (514 ids).
    "tiny": {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 8, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 514, "width": 32, "heads": 4, "layers": 2},
    },
}


def clip_config_from_open_clip(architecture: dict):
    """A `transformers.CLIPConfig` equal to an open_clip ViT CLIP config (exact GELU, LayerNorm eps 1e-5)."""
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    vision, text = architecture["vision_cfg"], architecture["text_cfg"]
    embed_dim = architecture["embed_dim"]
    vision_config = CLIPVisionConfig(
        hidden_size=vision["width"],
        intermediate_size=int(vision["width"] * vision.get("mlp_ratio", 4.0)),
        num_hidden_layers=vision["layers"],
        num_attention_heads=vision["width"] // vision.get("head_width", 64),
        image_size=vision["image_size"],
        patch_size=vision["patch_size"],
        projection_dim=embed_dim,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )
    vocab = text["vocab_size"]
    text_config = CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=text["width"],
        intermediate_size=int(text["width"] * text.get("mlp_ratio", 4.0)),
        num_hidden_layers=text["layers"],
        num_attention_heads=text["heads"],
        max_position_embeddings=text["context_length"],
        projection_dim=embed_dim,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        # open_clip pools at argmax(ids): the end-of-text token, the highest id of its vocabulary.
        bos_token_id=vocab - 2,
        eos_token_id=vocab - 1,
        pad_token_id=0,
    )
    return CLIPConfig(
        text_config=text_config.to_dict(), vision_config=vision_config.to_dict(), projection_dim=embed_dim
    )


_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_BLOCK_PARTS = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}
_TOP_LEVEL = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}
_TRANSPOSED = {"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}


def open_clip_to_transformers(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """An open_clip ViT CLIP state dict with `CLIPModel` names (q/k/v split, projections transposed).

    Keys it does not know keep their names, so a wrong checkpoint shows up as unexpected keys.
    """
    mapped: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        block = _BLOCK.match(key)
        if key in _TOP_LEVEL:
            mapped[_TOP_LEVEL[key]] = value
        elif key in _TRANSPOSED:
            mapped[_TRANSPOSED[key]] = value.t().contiguous()
        elif block:
            tower = "vision_model" if block.group(1) else "text_model"
            prefix, rest = f"{tower}.encoder.layers.{block.group(2)}.", block.group(3)
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[-1]
                for name, part in zip(("q", "k", "v"), value.chunk(3, dim=0), strict=True):
                    mapped[f"{prefix}self_attn.{name}_proj.{kind}"] = part.contiguous()
                continue
            module, _, leaf = rest.rpartition(".")
            mapped[prefix + f"{_BLOCK_PARTS.get(module, module)}.{leaf}"] = value
        else:
            mapped[key] = value
    return mapped


def tiny_hps_model(seed: int = 7):
    """A seeded random `CLIPModel` of the tiny open_clip-family architecture (tests, `model="tiny"`)."""
    from transformers import CLIPModel

    torch.manual_seed(seed)
    return CLIPModel(clip_config_from_open_clip(ARCHITECTURES["tiny"]))


class HPSv2(CosineReward):
    """Human Preference Score v2: `scale · cos(f_image, f_text)` per image, float32 `(B,)`.

    model: "v2.1" or "v2.0" (the checkpoint `xswu/HPSv2/HPS_v2*_compressed.pt` from the hub cache), a local
        `.pt` checkpoint or its safetensors conversion (`renegx convert-reward`), a hub file
        `owner/name/file`, or "tiny" (seeded random weights, byte-level tokenizer).
    tokenizer: the CLIP BPE tokenizer, a hub id or a local folder in transformers layout.
    architecture: an open_clip model config name ("ViT-H-14") or the config dict itself.
    scale: 1 for training, 100 for the reported HPS.
    """

    name = "hpsv2"
    # open_clip reads prompts literally; the laion HF tokenizer makes "!" its (special) pad token.
    split_special_tokens = True

    def __init__(
        self,
        model: str = "v2.1",
        tokenizer: str = HPS_TOKENIZER,
        architecture: str | dict = "ViT-H-14",
        scale: float = 1.0,
    ):
        super().__init__()
        from transformers import CLIPModel, CLIPTokenizer

        if model == "tiny":
            from renegx.tiny import byte_level_clip_tokenizer

            self.set_clip(tiny_hps_model(), byte_level_clip_tokenizer(), scale)
            return
        if isinstance(architecture, str):
            if architecture not in ARCHITECTURES:
                known = ", ".join(sorted(ARCHITECTURES))
                raise RewardError(f"unknown HPSv2 architecture '{architecture}'; known: {known}")
            architecture = ARCHITECTURES[architecture]
        spec = f"{HPS_REPO}/{HPS_FILES[model]}" if model in HPS_FILES else model
        path = fetch_file(spec, "HPSv2 checkpoint")
        clip = build_empty(CLIPModel, clip_config_from_open_clip(architecture))
        load_weights(clip, open_clip_to_transformers(load_state_dict(path, "HPSv2 checkpoint")), f"{path}")
        self.set_clip(clip, load_pretrained(CLIPTokenizer, tokenizer, "HPSv2 tokenizer"), scale)

    def preprocess(self, images: Tensor) -> Tensor:
        return normalize(resize_longest_pad(images, self.image_size), self.mean, self.std)
