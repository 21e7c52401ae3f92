"""ImageReward: BLIP ViT-L image encoder → BERT cross-attending to it → linear MLP → fixed normalisation.

Built on transformers' own BLIP classes (`BlipVisionModel`, `BlipTextModel`), with a key mapping from the
upstream `ImageReward.pt` (`blip.visual_encoder.*` timm ViT names, `blip.text_encoder.*` BERT names, `mlp.*`).
The reward is the CLS feature of the text encoder through the MLP, `(r − 0.16717…) / 1.03333…`. Prompts are
BERT-tokenised to exactly 35 tokens (once per distinct prompt); images go through torchvision's
Resize(224, bicubic) + CenterCrop(224) and CLIP mean/std, rebuilt in torch. Features depend on the image, so
only the tokens are cached.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn

from renegx.rewards.base import Reward, RewardError
from renegx.rewards.heads import REAL_WIDTHS, TINY_WIDTHS, LinearHead
from renegx.rewards.loading import build_empty, fetch_file, load_pretrained, load_state_dict, load_weights
from renegx.rewards.preprocess import CLIP_MEAN, CLIP_STD, normalize
from renegx.rewards.transforms import resize_center_crop_torchvision

IMAGEREWARD_REPO = "THUDM/ImageReward"
IMAGEREWARD_FILES = ("ImageReward.pt", "med_config.json")
BERT_TOKENIZER = "google-bert/bert-base-uncased"
REWARD_MEAN, REWARD_STD = 0.16717362830052426, 1.0333394966054072
MAX_LENGTH = 35

# BLIP's create_vit('large', 224): timm ViT-L/16 with LayerNorm eps 1e-6 and exact GELU.
VISION = {
    "large": {
        "image_size": 224,
        "patch_size": 16,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
    },
    "tiny": {
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 24,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    },
}
# med_config.json of BLIP/ImageReward (a BERT-base with cross-attention in every layer) and a tiny one.
MED_CONFIG = {
    "large": {
        "vocab_size": 30524,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 512,
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
        "pad_token_id": 0,
    },
    "tiny": {
        "vocab_size": 85,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 64,
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
        "pad_token_id": 0,
    },
}
_TINY_VOCAB = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")
    + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
)


def tiny_bert_tokenizer():
    """A character-level BERT WordPiece tokenizer (83 ids + [DEC], [ENC] = 85) written to local files."""
    from transformers import BertTokenizer

    with tempfile.TemporaryDirectory() as folder:
        vocab = Path(folder, "vocab.txt")
        vocab.write_text("\n".join(_TINY_VOCAB) + "\n")
        return with_blip_tokens(BertTokenizer(str(vocab)))


def with_blip_tokens(tokenizer):
    """BLIP's additions to the BERT tokenizer: bos `[DEC]` and the extra special token `[ENC]`."""
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


def blip_configs(vision: dict, med: dict):
    """(`BlipVisionConfig`, `BlipTextConfig`) for a BLIP ViT and a med_config.json dict."""
    from transformers import BlipTextConfig, BlipVisionConfig

    vision_config = BlipVisionConfig(**vision, layer_norm_eps=1e-6, hidden_act="gelu")
    text_config = BlipTextConfig(
        vocab_size=med["vocab_size"],
        hidden_size=med["hidden_size"],
        intermediate_size=med["intermediate_size"],
        num_hidden_layers=med["num_hidden_layers"],
        num_attention_heads=med["num_attention_heads"],
        max_position_embeddings=med["max_position_embeddings"],
        layer_norm_eps=med.get("layer_norm_eps", 1e-12),
        hidden_act=med.get("hidden_act", "gelu"),
        pad_token_id=med.get("pad_token_id", 0),
        encoder_hidden_size=vision["hidden_size"],
        bos_token_id=None,
        sep_token_id=None,
        eos_token_id=None,
    )
    return vision_config, text_config


class ImageRewardNet(nn.Module):
    """vision (BlipVisionModel) + text (BlipTextModel, cross-attention, no pooler) + head (LinearHead)."""

    def __init__(self, vision_config, text_config, head_widths=REAL_WIDTHS, empty: bool = False):
        super().__init__()
        from transformers import BlipVisionModel
        from transformers.models.blip.modeling_blip_text import BlipTextModel

        def build(model_class, config, **kwargs):
            return (
                build_empty(lambda c: model_class(c, **kwargs), config)
                if empty
                else model_class(config, **kwargs)
            )

        self.vision = build(BlipVisionModel, vision_config)
        self.text = build(BlipTextModel, text_config, add_pooling_layer=False)
        self.head = LinearHead(text_config.hidden_size, head_widths)

    def forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Normalised rewards `(B,)` from `pixel_values` `(B, 3, S, S)` and tokens `(B, L)`."""
        image_embeds = self.vision(pixel_values=pixel_values).last_hidden_state
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        text = self.text(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
        ).last_hidden_state
        rewards = self.head(text[:, 0]).squeeze(-1).float()
        return (rewards - REWARD_MEAN) / REWARD_STD


_VISION_KEYS = [
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
    (r"^norm\.", "post_layernorm."),
]
# Parts of BLIP_Pretrain that ImageReward's score never uses.
_UNUSED = ("blip.vision_proj.", "blip.text_proj.")


def image_reward_to_renegx(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """An `ImageReward.pt` state dict with `ImageRewardNet` names; unknown keys keep theirs."""
    mapped = {}
    for key, value in state_dict.items():
        if key.startswith(_UNUSED) or key.endswith("position_ids"):
            continue
        if key.startswith("blip.visual_encoder."):
            name = key.removeprefix("blip.visual_encoder.")
            for pattern, replacement in _VISION_KEYS:
                name, count = re.subn(pattern, replacement, name)
                if count:
                    break
            key = "vision." + name
        elif key.startswith("blip.text_encoder."):
            key = "text." + key.removeprefix("blip.text_encoder.")
        elif key.startswith("mlp."):
            key = "head." + key.removeprefix("mlp.")
        mapped[key] = value
    return mapped


def tiny_image_reward_net(seed: int = 13) -> ImageRewardNet:
    torch.manual_seed(seed)
    return ImageRewardNet(*blip_configs(VISION["tiny"], MED_CONFIG["tiny"]), TINY_WIDTHS)


def _checkpoint_and_config(model: str) -> tuple[Path, dict | None]:
    """The checkpoint file and med_config.json (None when absent locally) for a repo, folder or file."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        candidates = [folder / n for n in ("ImageReward.safetensors", "ImageReward.pt")]
        checkpoint = next((c for c in candidates if c.is_file()), None)
        if checkpoint is None:
            raise RewardError(f"no ImageReward.safetensors or ImageReward.pt in {folder}")
        med = folder / "med_config.json"
        return checkpoint, json.loads(med.read_text()) if med.is_file() else None
    if folder.is_file() or model.count("/") != 1:
        checkpoint = fetch_file(model, "ImageReward checkpoint")
        med = checkpoint.with_name("med_config.json")
        return checkpoint, json.loads(med.read_text()) if med.is_file() else None
    checkpoint = fetch_file(f"{model}/{IMAGEREWARD_FILES[0]}", "ImageReward checkpoint")
    med = fetch_file(f"{model}/{IMAGEREWARD_FILES[1]}", "ImageReward med_config")
    return checkpoint, json.loads(med.read_text())


class ImageReward(Reward):
    """ImageReward per image, float32 `(B,)` (normalised: about 0 ± 1 over generated images).

    model: a hub repo holding ImageReward.pt and med_config.json ("THUDM/ImageReward"), a local folder with
        ImageReward.pt (or its safetensors conversion) and med_config.json, a checkpoint file, or "tiny".
    tokenizer: the BERT tokenizer (hub id or local folder); BLIP's [DEC]/[ENC] tokens are added.
    architecture: the BLIP ViT, "large" (ImageReward), "tiny", or a `BlipVisionConfig` dict of sizes; the
        text encoder follows med_config.json.
    """

    name = "imagereward"

    def __init__(
        self,
        model: str = IMAGEREWARD_REPO,
        tokenizer: str = BERT_TOKENIZER,
        architecture: str | dict = "large",
    ):
        super().__init__()
        from transformers import BertTokenizer

        if model == "tiny":
            self.net, self.tokenizer = tiny_image_reward_net(), tiny_bert_tokenizer()
            vision = VISION["tiny"]
        else:
            preset = architecture if isinstance(architecture, str) else "large"
            if preset not in VISION:
                raise RewardError(f"unknown ImageReward architecture '{preset}'; known: large, tiny")
            vision = VISION[preset] if isinstance(architecture, str) else dict(architecture)
            checkpoint, med = _checkpoint_and_config(model)
            weights = image_reward_to_renegx(load_state_dict(checkpoint, "ImageReward checkpoint"))
            _, widths = LinearHead.widths_of(weights, "head.layers.")
            configs = blip_configs(vision, med or MED_CONFIG[preset])
            self.net = ImageRewardNet(*configs, widths or REAL_WIDTHS, empty=True)
            load_weights(self.net, weights, f"ImageReward checkpoint {checkpoint}")
            self.tokenizer = with_blip_tokens(
                load_pretrained(BertTokenizer, tokenizer, "ImageReward tokenizer")
            )
        self.image_size = int(vision["image_size"])
        self.register_buffer("mean", torch.tensor(CLIP_MEAN), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD), persistent=False)
        self.tokens: dict[str, tuple[Tensor, Tensor]] = {}
        self.freeze()

    def tokenize(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """(input_ids, attention_mask) `(B, 35)`, each distinct prompt tokenised once."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self.tokens))
        if missing:
            encoded = self.tokenizer(
                missing, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
            )
            self.tokens.update(
                zip(missing, zip(encoded.input_ids, encoded.attention_mask, strict=True), strict=True)
            )
        ids, masks = zip(*(self.tokens[p] for p in prompts), strict=True)
        return torch.stack(ids), torch.stack(masks)

    def preprocess(self, images: Tensor) -> Tensor:
        """`images` `(B, 3, H, W)` in [0, 1] → `pixel_values` `(B, 3, S, S)`, differentiable."""
        return normalize(resize_center_crop_torchvision(images, self.image_size), self.mean, self.std)

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        input_ids, attention_mask = (t.to(images.device) for t in self.tokenize(prompts))
        dtype = self.net.head.layers[0].weight.dtype
        return self.net(self.preprocess(images).to(dtype), input_ids, attention_mask)
