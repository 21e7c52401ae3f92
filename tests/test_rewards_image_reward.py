"""ImageReward: the ImageReward.pt → BLIP key mapping, tokens, torchvision-style crop, loading errors.

Parity with the upstream ImageReward model code is in test_rewards_parity.py (parity environment).
"""

from __future__ import annotations

import json

import pytest
import torch

from renegx.rewards import ImageReward, RewardError
from renegx.rewards.image_reward import MAX_LENGTH, MED_CONFIG, tiny_image_reward_net
from renegx.rewards.transforms import resize_center_crop_torchvision

PROMPTS = ["a red circle", "a blue square"]


def to_upstream(net) -> dict[str, torch.Tensor]:
    """`ImageRewardNet` weights in ImageReward.pt's names (timm ViT, BLIP BERT, mlp), plus BLIP's extras."""
    renames = [
        ("vision.embeddings.class_embedding", "blip.visual_encoder.cls_token"),
        ("vision.embeddings.position_embedding", "blip.visual_encoder.pos_embed"),
        ("vision.embeddings.patch_embedding.", "blip.visual_encoder.patch_embed.proj."),
        ("vision.encoder.layers.", "blip.visual_encoder.blocks."),
        ("vision.post_layernorm.", "blip.visual_encoder.norm."),
        (".layer_norm1.", ".norm1."),
        (".layer_norm2.", ".norm2."),
        (".self_attn.qkv.", ".attn.qkv."),
        (".self_attn.projection.", ".attn.proj."),
        ("text.", "blip.text_encoder."),
        ("head.", "mlp."),
    ]
    out = {}
    for key, value in net.state_dict().items():
        for ours, theirs in renames:
            if key.startswith(ours) or (ours.startswith(".") and ours in key):
                key = key.replace(ours, theirs, 1)
        out[key] = value
    out["blip.text_encoder.embeddings.position_ids"] = torch.arange(64)[None]
    out["blip.vision_proj.weight"] = torch.zeros(4, 24)
    out["blip.text_proj.weight"] = torch.zeros(4, 32)
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imagereward")
    torch.save(to_upstream(tiny_image_reward_net()), folder / "ImageReward.pt")
    (folder / "med_config.json").write_text(json.dumps(MED_CONFIG["tiny"]))
    ImageReward(model="tiny").tokenizer.save_pretrained(folder / "tokenizer")
    return folder


def images(batch=2, height=40, width=56):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(0))


def test_upstream_checkpoint_loads_onto_blip_classes(folder):
    loaded = ImageReward(model=str(folder), tokenizer=str(folder / "tokenizer"), architecture="tiny")
    reference = ImageReward(model="tiny")
    torch.testing.assert_close(loaded(images(), PROMPTS), reference(images(), PROMPTS), atol=0, rtol=0)


def test_checkpoint_file_with_med_config_beside_it(folder):
    loaded = ImageReward(
        model=str(folder / "ImageReward.pt"), tokenizer=str(folder / "tokenizer"), architecture="tiny"
    )
    assert loaded.net.text.config.hidden_size == MED_CONFIG["tiny"]["hidden_size"]


def test_tokens_are_35_long_and_cached_per_prompt():
    reward = ImageReward(model="tiny")
    ids, mask = reward.tokenize(["a", "a much longer prompt " * 10, "a"])
    assert ids.shape == mask.shape == (3, MAX_LENGTH)
    assert mask[0].sum() == 3 and mask[1].sum() == MAX_LENGTH  # [CLS] a [SEP]; truncated
    assert ids[0, 0] == reward.tokenizer.cls_token_id and len(reward.tokens) == 2
    assert reward.tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [83, 84]


@pytest.mark.parametrize(("height", "width"), [(32, 35), (35, 32), (32, 37), (32, 32)])
def test_center_crop_rounds_like_torchvision(height, width):
    index = torch.arange(height * width, dtype=torch.float32).view(1, 1, height, width)
    top, left = int(round((height - 32) / 2.0)), int(round((width - 32) / 2.0))
    assert torch.equal(
        resize_center_crop_torchvision(index, 32), index[..., top : top + 32, left : left + 32]
    )


def test_wrong_checkpoint_reports_keys(folder, tmp_path):
    state = torch.load(folder / "ImageReward.pt", weights_only=True)
    state.pop("mlp.layers.7.bias")
    state["blip.itm_head.weight"] = torch.zeros(2, 32)
    torch.save(state, tmp_path / "ImageReward.pt")
    (tmp_path / "med_config.json").write_text((folder / "med_config.json").read_text())
    with pytest.raises(RewardError) as error:
        ImageReward(model=str(tmp_path), tokenizer=str(folder / "tokenizer"), architecture="tiny")
    message = str(error.value)
    assert (
        "missing keys: head.layers.7.bias" in message and "unexpected keys: blip.itm_head.weight" in message
    )


def test_folder_without_checkpoint(tmp_path):
    with pytest.raises(RewardError, match="no ImageReward.safetensors or ImageReward.pt in"):
        ImageReward(model=str(tmp_path))


def test_unknown_architecture(folder):
    with pytest.raises(RewardError, match="unknown ImageReward architecture 'huge'; known: large, tiny"):
        ImageReward(model=str(folder), architecture="huge")


def test_missing_hub_checkpoint_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(RewardError) as error:
        ImageReward()
    assert "hf download THUDM/ImageReward ImageReward.pt" in str(error.value)
