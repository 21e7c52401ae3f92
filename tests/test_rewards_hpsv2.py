"""HPSv2: ResizeMaxSize preprocessing, the open_clip → CLIPModel key mapping, loading and its errors.

Parity with hpsv2's own open_clip model and transform is in test_rewards_parity.py (parity environment).
"""

from __future__ import annotations

import pytest
import torch

from renegx.rewards import HPSv2, RewardError
from renegx.rewards.hpsv2 import ARCHITECTURES, open_clip_to_transformers, tiny_hps_model
from renegx.rewards.preprocess import CLIP_MEAN, CLIP_STD
from renegx.rewards.transforms import resize_longest_pad
from renegx.tiny import byte_level_clip_tokenizer

PROMPTS = ["a red circle", "a blue square"]


def to_open_clip(clip) -> dict[str, torch.Tensor]:
    """The inverse of the mapping, written independently: a CLIPModel state dict in open_clip's names."""
    out = {}
    for key, value in clip.state_dict().items():
        if key.endswith("position_ids"):
            continue
        name = key.replace("text_model.embeddings.token_embedding", "token_embedding")
        name = name.replace("text_model.embeddings.position_embedding.weight", "positional_embedding")
        name = name.replace("text_model.final_layer_norm", "ln_final")
        name = name.replace("vision_model.embeddings.class_embedding", "visual.class_embedding")
        name = name.replace(
            "vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"
        )
        name = name.replace("vision_model.embeddings.patch_embedding", "visual.conv1")
        name = name.replace("vision_model.pre_layrnorm", "visual.ln_pre").replace(
            "vision_model.post_layernorm", "visual.ln_post"
        )
        name = name.replace("vision_model.encoder.layers", "visual.transformer.resblocks")
        name = name.replace("text_model.encoder.layers", "transformer.resblocks")
        for ours, theirs in [
            ("layer_norm1", "ln_1"),
            ("layer_norm2", "ln_2"),
            ("mlp.fc1", "mlp.c_fc"),
            ("mlp.fc2", "mlp.c_proj"),
        ]:
            name = name.replace(ours, theirs)
        name = name.replace("self_attn.out_proj", "attn.out_proj")
        if name in ("text_projection.weight", "visual_projection.weight"):
            name, value = ("text_projection" if name.startswith("text") else "visual.proj"), value.t()
        out[name] = value
    for prefix in {k.rsplit(".self_attn.", 1)[0] for k in list(out) if ".self_attn.q_proj." in k}:
        for kind in ("weight", "bias"):
            parts = [out.pop(f"{prefix}.self_attn.{n}_proj.{kind}") for n in "qkv"]
            out[f"{prefix}.attn.in_proj_{kind}"] = torch.cat(parts)
    return out


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hps")
    torch.save({"state_dict": to_open_clip(tiny_hps_model())}, folder / "HPS_tiny.pt")
    byte_level_clip_tokenizer().save_pretrained(folder / "tokenizer")
    return folder


def images(batch=2, height=40, width=56):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(0))


# Preprocessing


@pytest.mark.parametrize(("height", "width"), [(64, 64), (40, 64), (64, 23), (16, 16), (32, 20)])
def test_resize_longest_pad_shape_and_padding(height, width):
    out = resize_longest_pad(images(1, height, width), 32)
    assert out.shape == (1, 3, 32, 32)
    scale = 32 / max(height, width)
    new_h, new_w = round(height * scale), round(width * scale)
    top, left = (32 - new_h) // 2, (32 - new_w) // 2
    content = torch.zeros(32, 32, dtype=torch.bool)
    content[top : top + new_h, left : left + new_w] = True
    assert (out[..., ~content] == 0).all()  # zero fill, in [0, 1] space
    assert out[..., content].abs().sum() > 0


def test_resize_longest_pad_is_identity_at_size():
    x = images(1, 32, 32)
    assert torch.equal(resize_longest_pad(x, 32), x)


def test_padding_is_filled_before_normalisation():
    reward = HPSv2(model="tiny")
    pixels = reward.preprocess(torch.ones(1, 3, 32, 16))
    expected = (0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(pixels[0, :, :, 0], expected[:, None].expand(3, 32))


# Mapping and loading


def test_open_clip_checkpoint_loads_onto_the_same_model(tiny_checkpoint):
    loaded = HPSv2(
        model=str(tiny_checkpoint / "HPS_tiny.pt"),
        tokenizer=str(tiny_checkpoint / "tokenizer"),
        architecture="tiny",
    )
    reference = HPSv2(model="tiny")
    for key, value in reference.model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[key], value, atol=0, rtol=0, msg=key)
    torch.testing.assert_close(loaded(images(), PROMPTS), reference(images(), PROMPTS), atol=0, rtol=0)
    scaled = HPSv2(model="tiny", scale=100.0)(images(), PROMPTS)
    torch.testing.assert_close(scaled, 100 * reference(images(), PROMPTS), atol=1e-4, rtol=0)


def test_mapping_splits_attention_and_transposes_projections():
    width = 8
    state = {
        "transformer.resblocks.0.attn.in_proj_weight": torch.arange(
            3 * width * width, dtype=torch.float32
        ).view(3 * width, width),
        "visual.proj": torch.arange(8 * 4, dtype=torch.float32).view(8, 4),
        "module.ln_final.weight": torch.ones(8),
        "something.else": torch.zeros(1),
    }
    mapped = open_clip_to_transformers(state)
    k = mapped["text_model.encoder.layers.0.self_attn.k_proj.weight"]
    assert torch.equal(k, state["transformer.resblocks.0.attn.in_proj_weight"][width : 2 * width])
    assert torch.equal(mapped["visual_projection.weight"], state["visual.proj"].t())
    assert "text_model.final_layer_norm.weight" in mapped and "something.else" in mapped


def test_safetensors_conversion_loads_the_same(tiny_checkpoint):
    from renegx.cli.convert_reward import convert_reward_checkpoint

    converted = convert_reward_checkpoint(tiny_checkpoint / "HPS_tiny.pt")
    assert converted.suffix == ".safetensors"
    loaded = HPSv2(model=str(converted), tokenizer=str(tiny_checkpoint / "tokenizer"), architecture="tiny")
    torch.testing.assert_close(
        loaded(images(), PROMPTS), HPSv2(model="tiny")(images(), PROMPTS), atol=0, rtol=0
    )


def test_wrong_architecture_reports_missing_and_unexpected_keys(tiny_checkpoint, tmp_path):
    state = torch.load(tiny_checkpoint / "HPS_tiny.pt", weights_only=True)["state_dict"]
    state.pop("ln_final.weight")
    state["visual.attnpool.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "broken.pt")
    with pytest.raises(RewardError) as error:
        HPSv2(
            model=str(tmp_path / "broken.pt"),
            tokenizer=str(tiny_checkpoint / "tokenizer"),
            architecture="tiny",
        )
    message = str(error.value)
    assert "does not fit the expected architecture" in message and "\n" not in message
    assert "missing keys: text_model.final_layer_norm.weight" in message
    assert "unexpected keys: visual.attnpool.weight" in message


def test_checkpoint_of_other_widths_reports_shape_mismatch(tiny_checkpoint):
    wider = {**ARCHITECTURES["tiny"], "embed_dim": 24}
    with pytest.raises(RewardError, match=r"shape mismatch: text_projection.weight \(16, 32\) vs \(24, 32\)"):
        HPSv2(
            model=str(tiny_checkpoint / "HPS_tiny.pt"),
            tokenizer=str(tiny_checkpoint / "tokenizer"),
            architecture=wider,
        )


def test_unknown_architecture_lists_known(tiny_checkpoint):
    with pytest.raises(RewardError, match="unknown HPSv2 architecture 'ViT-Q'; known: ViT-H-14, tiny"):
        HPSv2(model=str(tiny_checkpoint / "HPS_tiny.pt"), architecture="ViT-Q")


def test_missing_checkpoint_offline_names_the_file_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(RewardError) as error:
        HPSv2(model="v2.1")
    message = str(error.value)
    assert "HPS_v2.1_compressed.pt" in message and "hf download xswu/HPSv2 HPS_v2.1_compressed.pt" in message
    assert "renegx weights" in message and "\n" not in message


def test_missing_local_checkpoint():
    with pytest.raises(RewardError, match="HPSv2 checkpoint file not found: ./nowhere/HPS.pt"):
        HPSv2(model="./nowhere/HPS.pt")
