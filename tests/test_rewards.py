"""Rewards: torch preprocessing vs CLIPImageProcessor, ClipScore vs the official CLIP forward, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from renegx.rewards import ClipScore, NonFiniteRewardError, Reward, RewardError, build_reward
from renegx.rewards.preprocess import CLIP_MEAN, CLIP_STD, clip_preprocess, resize_shortest_center_crop
from renegx.tiny import byte_level_clip_tokenizer, tiny_clip_model

PROMPTS = ["a red circle", "a blue square on grass", "a red circle"]


@pytest.fixture(scope="module")
def reward() -> ClipScore:
    return ClipScore(model="tiny")


def images(batch: int = 3, height: int = 40, width: int = 56, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1]: low-frequency noise upsampled."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(batch, 3, 4, 5, generator=generator)
    return F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)


def official_pixel_values(uint8_images: torch.Tensor, size: int) -> torch.Tensor:
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}, do_convert_rgb=True
    )
    arrays = [image.permute(1, 2, 0).numpy() for image in uint8_images]
    return processor(images=arrays, return_tensors="pt").pixel_values


# Preprocessing


@pytest.mark.parametrize(
    ("height", "width", "size"),
    [(64, 64, 32), (16, 16, 32), (48, 80, 32), (80, 40, 32), (33, 47, 24)],
    ids=["down-64-32", "up-16-32", "wide", "tall", "odd"],
)
def test_clip_preprocess_matches_clip_image_processor(height, width, size):
    uint8_images = (images(2, height, width) * 255).round().to(torch.uint8)
    expected = official_pixel_values(uint8_images, size)
    ours = clip_preprocess(uint8_images.float() / 255, size)
    assert ours.shape == expected.shape == (2, 3, size, size)
    difference = (ours - expected).abs()
    # The processor resizes uint8 in PIL (same a=-0.5 antialiased bicubic as torch's antialias=True) and
    # rounds to uint8: measured mean ~0.004, max ~0.016 (one uint8 step is 1/255/0.26 = 0.015 here).
    assert difference.mean() < 0.01
    assert difference.max() < 0.03


@pytest.mark.parametrize(("height", "width"), [(32, 48), (48, 32), (32, 37), (41, 32), (32, 32)])
def test_center_crop_is_exact_when_no_resize_is_needed(height, width):
    index = torch.arange(3 * height * width, dtype=torch.float32).view(1, 3, height, width)
    top, left = (height - 32) // 2, (width - 32) // 2
    cropped = resize_shortest_center_crop(index, 32)
    assert torch.equal(cropped, index[..., top : top + 32, left : left + 32])

    uint8_images = (index % 251).to(torch.uint8)
    expected = official_pixel_values(uint8_images, 32)
    torch.testing.assert_close(clip_preprocess(uint8_images.float() / 255, 32), expected, atol=1e-5, rtol=0)


def test_clip_preprocess_is_differentiable():
    x = images(1, 64, 48).requires_grad_(True)
    clip_preprocess(x, 32).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# ClipScore


def test_clip_score_equals_official_clip_forward(reward):
    x = images()
    scores = reward(x, PROMPTS)
    assert scores.shape == (3,) and scores.dtype == torch.float32

    tokens = reward.tokenizer(PROMPTS, padding="max_length", truncation=True, return_tensors="pt")
    with torch.no_grad():
        output = reward.model(
            input_ids=tokens.input_ids,
            attention_mask=tokens.attention_mask,
            pixel_values=clip_preprocess(x, 32, CLIP_MEAN, CLIP_STD),
        )
        cosine = output.logits_per_image.diagonal() / reward.model.logit_scale.exp()
    torch.testing.assert_close(scores.detach(), cosine, atol=1e-5, rtol=0)

    scaled = ClipScore(model="tiny", scale=100.0)(x, PROMPTS)
    torch.testing.assert_close(scaled.detach(), 100 * scores.detach(), atol=1e-4, rtol=0)


def test_local_folder_round_trip(tmp_path, reward):
    from transformers import CLIPImageProcessor

    tiny_clip_model().save_pretrained(tmp_path)
    byte_level_clip_tokenizer().save_pretrained(tmp_path)
    x = images()
    from_folder = ClipScore(model=str(tmp_path))
    torch.testing.assert_close(from_folder(x, PROMPTS), reward(x, PROMPTS), atol=1e-6, rtol=0)
    torch.testing.assert_close(from_folder.mean, torch.tensor(CLIP_MEAN))

    CLIPImageProcessor(image_mean=[0.5] * 3, image_std=[0.25] * 3).save_pretrained(tmp_path)
    with_processor = ClipScore(model=str(tmp_path))
    assert with_processor.mean.tolist() == [0.5] * 3 and with_processor.std.tolist() == [0.25] * 3


def test_gradients_reach_images_and_no_reward_parameter(reward):
    x = images().requires_grad_(True)
    (-reward(x, PROMPTS).mean()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in reward.parameters())


def test_text_encoder_runs_once_per_distinct_prompt():
    reward = ClipScore(model="tiny")
    encoded = []
    reward.model.text_model.register_forward_hook(
        lambda module, args, kwargs, output: encoded.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    same_image = images(1).repeat(3, 1, 1, 1)
    first = reward(same_image, ["a", "b", "a"])
    second = reward(same_image, ["b", "a", "c"])
    assert sum(encoded) == 3
    torch.testing.assert_close(first[[0, 2]], second[[1, 1]])


def test_reward_stays_in_eval_mode(reward):
    parent = torch.nn.Sequential(reward)
    parent.train()
    reward.train(True)
    assert not reward.training
    assert not any(module.training for module in reward.modules())


# Errors


@pytest.mark.parametrize(
    ("bad_images", "prompts", "message"),
    [
        (torch.rand(2, 32, 32), ["a", "b"], "expected images (B, 3, H, W), got shape (2, 32, 32)"),
        (torch.rand(2, 4, 32, 32), ["a", "b"], "expected images (B, 3, H, W), got shape (2, 4, 32, 32)"),
        (torch.rand(2, 3, 32, 32) * 2, ["a", "b"], "images must be in [0, 1]; got min"),
        (torch.rand(2, 3, 32, 32) - 0.1, ["a", "b"], "images must be in [0, 1]; got min"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), ["a", "b"], "floating-point"),
        (torch.rand(2, 3, 32, 32), ["a"], "got 1 prompts for 2 images"),
        (torch.rand(2, 3, 32, 32), [], "prompts must not be empty"),
        (torch.rand(2, 3, 32, 32), "ab", "list of strings"),
    ],
    ids=["3d", "4-channels", "above-1", "below-0", "uint8", "prompt-count", "no-prompts", "str-prompts"],
)
def test_bad_inputs_raise_one_line_reward_errors(reward, bad_images, prompts, message):
    with pytest.raises(RewardError) as error:
        reward(bad_images, prompts)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_range_tolerance_accepts_tiny_overshoot(reward):
    x = images(2).clamp(0, 1)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = -5e-5, 1 + 5e-5
    assert reward(x, ["a", "b"]).shape == (2,)


def test_nan_images_raise_non_finite_reward_error(reward):
    x = images(2)
    x[1, 0, 3, 3] = float("nan")
    with pytest.raises(NonFiniteRewardError, match="1 of 2 images"):
        reward(x, ["a", "b"])


def test_nan_score_raises_non_finite_reward_error(reward, monkeypatch):
    broken = torch.tensor([0.3, float("nan"), float("inf")])
    monkeypatch.setattr(reward, "score", lambda images, prompts: broken)
    with pytest.raises(NonFiniteRewardError, match="clip reward is NaN/Inf for 2 of 3 images"):
        reward(images(), PROMPTS)


def test_wrong_score_shape_raises(reward, monkeypatch):
    monkeypatch.setattr(reward, "score", lambda images, prompts: torch.zeros(3, 1))
    with pytest.raises(RewardError, match=r"returned shape \(3, 1\), expected \(3,\)"):
        reward(images(), PROMPTS)


def test_build_reward_by_name():
    assert isinstance(build_reward("clip", model="tiny"), ClipScore)
    with pytest.raises(RewardError, match="unknown reward 'hps'; known: aesthetic, clip, hpsv2, "):
        build_reward("hps")


@pytest.mark.parametrize("relative", [False, True])
def test_missing_local_folder(tmp_path, monkeypatch, relative):
    monkeypatch.chdir(tmp_path)
    path = "./no-such-clip" if relative else str(tmp_path / "no-such-clip")
    with pytest.raises(RewardError, match=f"reward model folder not found: {path}$"):
        ClipScore(model=path)


def test_uncached_hub_model_offline_says_to_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RewardError) as error:
        ClipScore(model="renegx-tests/no-such-clip")
    message = str(error.value)
    assert "renegx-tests/no-such-clip" in message and "download it first" in message and "\n" not in message


def test_reward_from_jsonargparse_class_path():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--reward", type=Reward)
    config = parser.parse_object(
        {"reward": {"class_path": "renegx.rewards.ClipScore", "init_args": {"model": "tiny", "scale": 100}}}
    )
    built = parser.instantiate(config).reward
    assert isinstance(built, ClipScore) and built.scale == 100.0
