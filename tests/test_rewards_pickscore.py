"""PickScore and the LAION aesthetic predictor against their official scoring paths (transformers processors).

Official PickScore: `processor(images=PIL)`, `processor(text=..., padding=True)`, `get_image/text_features`,
normalise, `logit_scale.exp() * text @ image.T`. Official aesthetic: the CLIP processor, `get_image_features`,
L2-normalise, the MLP. Both resize uint8 pictures in PIL, we resize floats in torch: the tolerances below are
that difference, measured.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from renegx.rewards import LaionAesthetic, PickScore, RewardError
from renegx.rewards.aesthetic import tiny_aesthetic_head
from renegx.tiny import byte_level_clip_tokenizer, tiny_clip_model

PROMPTS = ["a red circle", "A blue square, on grass!", "a red circle"]
SIZES = [(32, 32), (64, 64), (40, 56), (50, 33)]


def pictures(height: int, width: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 4, 5, generator=generator)
    uint8 = (F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False) * 255).round()
    uint8 = uint8.to(torch.uint8)
    return uint8.float() / 255, Image.fromarray(uint8[0].permute(1, 2, 0).numpy())


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A CLIP model folder (weights only) and a processor folder (tokenizer + preprocessor_config.json)."""
    from transformers import CLIPImageProcessor

    root = tmp_path_factory.mktemp("pickscore")
    model = tiny_clip_model()
    with torch.no_grad():
        model.logit_scale.fill_(np.log(100.0))  # PickScore's trained temperature
    model.save_pretrained(root / "model")
    byte_level_clip_tokenizer().save_pretrained(root / "processor")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        root / "processor"
    )
    return root


def official_processor(folder):
    from transformers import CLIPProcessor

    return CLIPProcessor.from_pretrained(folder, local_files_only=True)


def features(output) -> torch.Tensor:
    tensor = output if isinstance(output, torch.Tensor) else output.pooler_output
    return tensor / tensor.norm(dim=-1, keepdim=True)


def test_pickscore_equals_official_score(folders):
    from transformers import AutoModel

    reward = PickScore(model=str(folders / "model"), processor=str(folders / "processor"))
    processor, model = official_processor(folders / "processor"), AutoModel.from_pretrained(folders / "model")
    for seed, (height, width) in enumerate(SIZES):
        x, picture = pictures(height, width, seed)
        prompt = PROMPTS[seed % len(PROMPTS)]
        with torch.no_grad():
            image = features(model.get_image_features(**processor(images=[picture], return_tensors="pt")))
            text_inputs = processor(
                text=[prompt], padding=True, truncation=True, max_length=77, return_tensors="pt"
            )
            text = features(model.get_text_features(**text_inputs))
            official = model.logit_scale.exp() * (text @ image.T)[0]
        ours = reward(x, [prompt])
        # PIL's uint8 resize vs torch's float resize: cosines within 1e-3 (0.1 PickScore points at scale 100;
        # measured up to 0.065); exact when no resize happens (32×32).
        tolerance = 1e-4 if (height, width) == (32, 32) else 0.1
        assert (ours - official).abs().max() < tolerance, (height, width, ours, official)
    assert abs(reward.model.logit_scale.exp().item() - 100.0) < 1e-3


def test_pickscore_tiny_scores_are_scaled_cosines():
    reward = PickScore(model="tiny")
    x = pictures(32, 32, 0)[0].repeat(2, 1, 1, 1)
    cosine = (reward.encode_images(x) * reward.encode_text(["a", "b"])).sum(-1)
    torch.testing.assert_close(reward(x, ["a", "b"]), reward.model.logit_scale.exp() * cosine)


def test_pickscore_missing_processor_folder(folders):
    with pytest.raises(RewardError, match="PickScore tokenizer folder not found: ./no-processor"):
        PickScore(model=str(folders / "model"), processor="./no-processor")


# LAION aesthetic


@pytest.fixture(scope="module")
def aesthetic_files(folders, tmp_path_factory):
    root = tmp_path_factory.mktemp("aesthetic")
    head = tiny_aesthetic_head()
    with torch.no_grad():
        head.layers[7].weight.mul_(50)  # spread the scores so that equality means something
    torch.save(head.state_dict(), root / "head.pth")  # as the upstream .pth: a plain state dict
    return folders, root / "head.pth", head


def test_aesthetic_equals_official_score(aesthetic_files):
    from transformers import CLIPImageProcessor, CLIPModel

    folders, head_path, head = aesthetic_files
    (folders / "model" / "preprocessor_config.json").write_bytes(
        (folders / "processor" / "preprocessor_config.json").read_bytes()
    )
    reward = LaionAesthetic(model=str(folders / "model"), head=str(head_path))
    processor, model = (
        CLIPImageProcessor.from_pretrained(folders / "model"),
        CLIPModel.from_pretrained(folders / "model"),
    )
    mlp = torch.nn.Sequential(*head.layers).eval()  # upstream's MLP is this Sequential, keys layers.N
    scores, official = [], []
    for seed, (height, width) in enumerate(SIZES):
        x, picture = pictures(height, width, seed)
        with torch.no_grad():
            embedding = features(model.get_image_features(**processor(images=picture, return_tensors="pt")))
            official.append(mlp(embedding)[0, 0])
        scores.append(reward(x, ["ignored"])[0])
    scores, official = torch.stack(scores), torch.stack(official)
    assert official.std() > 0.05
    assert (scores[0] - official[0]).abs() < 1e-4  # 32×32: no resize, same pixels
    assert (scores - official).abs().max() < 0.01, (scores, official)  # measured up to 8e-4 on scores ~4


def test_aesthetic_head_from_safetensors_and_wrong_width(aesthetic_files, tmp_path):
    from safetensors.torch import save_file

    folders, head_path, head = aesthetic_files
    save_file(head.state_dict(), tmp_path / "head.safetensors")
    from_pth = LaionAesthetic(model=str(folders / "model"), head=str(head_path))
    from_safetensors = LaionAesthetic(model=str(folders / "model"), head=str(tmp_path / "head.safetensors"))
    x = pictures(40, 56, 0)[0]
    torch.testing.assert_close(from_pth(x, ["a"]), from_safetensors(x, ["a"]))

    torch.save(tiny_aesthetic_head(input_size=768).state_dict(), tmp_path / "l14.pth")
    with pytest.raises(RewardError, match="takes 768-d CLIP features;.* gives 16-d"):
        LaionAesthetic(model=str(folders / "model"), head=str(tmp_path / "l14.pth"))


def test_aesthetic_head_url_offline_says_how_to_get_it(folders, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RENEGX_CACHE", str(tmp_path))
    with pytest.raises(RewardError) as error:
        LaionAesthetic(model=str(folders / "model"))
    message = str(error.value)
    assert "sac+logos+ava1-l14-linearMSE.pth is not in" in message and "download https://" in message
