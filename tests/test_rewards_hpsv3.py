"""HPSv3 on a tiny random Qwen2-VL saved in the real layout: loading, scores, gradients, preprocessing.

The folder written here is what a user points `model`/`base` at: config.json, tokenizer files and
preprocessor_config.json of the base, and `HPSv3.safetensors` with every weight under upstream's names
(transformers 4.45 names, `lm_head` included). Everything is built locally; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from assertions import assert_one_line_error
from test_rewards_pickscore import pictures

from renegx.rewards import HPSv3, RewardError, build_reward
from renegx.rewards.hpsv3 import (
    IMAGE_TOKEN,
    INSTRUCTION,
    REWARD_REQUEST,
    chat_text,
    checkpoint_key,
    smart_resize,
    tiny_hpsv3,
    tiny_qwen2_vl_tokenizer,
)

PIXELS = 4 * 28 * 28  # a 56×56 image: 16 patches, 4 image tokens
PROMPTS = ["a red circle", "A blue square, on grass! {braces} <|Reward|> kept"]
# Qwen2-VL-7B-Instruct's chat template (chat_template.json of the hub repo).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = "
    "video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2-VL-7B-Instruct's preprocessor_config.json.
QWEN2_VL_PREPROCESSOR = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2VLProcessor",
}


def upstream_name(key: str) -> str:
    """Our key under transformers 4.45's Qwen2VLForConditionalGeneration names (the hpsv3 1.0.0 pin)."""
    if key.startswith("model.visual."):
        return key.removeprefix("model.")
    return key.replace("model.language_model.", "model.", 1)


def write_tiny_folder(folder, seed: int = 0):
    """A base + checkpoint folder in the real layout; returns the in-memory net whose weights it holds.

    The base part (config.json, tokenizer, preprocessor_config.json, chat_template.json) is what
    `AutoProcessor`/`AutoConfig` read from the hub's Qwen2-VL-7B-Instruct.
    """
    from safetensors.torch import save_file

    net, _, _ = tiny_hpsv3(seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # move every weight off its initial value so that the scores spread
        for parameter in net.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)
    config = net.model.config
    rows = config.text_config.vocab_size
    # The hub's config.json is flat (transformers 4.45): text settings on top, more ids than the tokenizer.
    flat = {**config.text_config.to_dict(), "vocab_size": rows + 7, "tie_word_embeddings": False}
    tokens = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    flat.update({key: getattr(config, key) for key in tokens}, model_type="qwen2_vl")
    flat["vision_config"] = config.vision_config.to_dict()
    (folder / "config.json").write_text(json.dumps(flat))
    tiny_qwen2_vl_tokenizer().save_pretrained(folder)  # the base tokenizer: no <|Reward|> yet
    (folder / "preprocessor_config.json").write_text(json.dumps(QWEN2_VL_PREPROCESSOR))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": QWEN2_VL_CHAT_TEMPLATE}))
    state = {upstream_name(k): v.contiguous() for k, v in net.state_dict().items()}
    state["lm_head.weight"] = torch.randn(rows, config.text_config.hidden_size, generator=generator)
    save_file(state, str(folder / "HPSv3.safetensors"))
    return net


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("hpsv3")
    return root, write_tiny_folder(root)


@pytest.fixture(scope="module")
def reward(folder):
    root, _ = folder
    return HPSv3(model=str(root), base=str(root), dtype="float32", pixels=PIXELS)


def test_instruction_is_the_upstream_text():
    """SHA-256 of hpsv3 1.0.0's INSTRUCTION + prompt_with_special_token (data_collator_qwen.py)."""
    digest = hashlib.sha256((INSTRUCTION + REWARD_REQUEST).encode()).hexdigest()
    assert digest == "f6ee57479d4e9eee76b49c00dc962e1e696a5a2b3cc32cebd9b1fa76fe27502c"


def test_chat_text_is_the_qwen2_vl_chat_template():
    tokenizer = tiny_qwen2_vl_tokenizer()
    for prompt in PROMPTS:
        user = INSTRUCTION.format(text_prompt=prompt) + REWARD_REQUEST
        content = [{"type": "image", "image": "x"}, {"type": "text", "text": user}]
        message = [{"role": "user", "content": content}]
        rendered = tokenizer.apply_chat_template(
            message, chat_template=QWEN2_VL_CHAT_TEMPLATE, tokenize=False, add_generation_prompt=True
        )
        # the processor then repeats the image token once per merged patch
        assert chat_text(prompt, 3) == rendered.replace(IMAGE_TOKEN, IMAGE_TOKEN * 3)


def test_checkpoint_keys_of_both_transformers_layouts():
    assert checkpoint_key("visual.blocks.0.attn.qkv.weight") == "model.visual.blocks.0.attn.qkv.weight"
    assert checkpoint_key("model.layers.1.mlp.fc.weight") == "model.language_model.layers.1.mlp.fc.weight"
    assert checkpoint_key("model.visual.merger.ln_q.weight") == "model.visual.merger.ln_q.weight"
    assert checkpoint_key("model.language_model.norm.weight") == "model.language_model.norm.weight"
    assert checkpoint_key("rm_head.5.weight") == "rm_head.5.weight"
    assert checkpoint_key("lm_head.weight") is None


@pytest.mark.parametrize(
    ("size", "expected"),
    [((512, 512), (448, 448)), ((1024, 1024), (448, 448)), ((512, 768), (364, 532)), ((64, 64), (448, 448))],
)
def test_smart_resize_at_the_hpsv3_pixel_budget(size, expected):
    height, width = smart_resize(*size, 28, 256 * 28 * 28, 256 * 28 * 28)
    assert (height, width) == expected and height * width <= 256 * 28 * 28


def test_preprocessing_equals_qwen2_vl_image_processor(reward, folder):
    """Same uint8 picture: transformers' processor (PIL backend) vs our torch path; grid and patch order."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    processor = Qwen2VLImageProcessorPil.from_pretrained(folder[0])
    options = {"size": {"shortest_edge": PIXELS, "longest_edge": PIXELS}, "return_tensors": "pt"}
    for seed, (height, width) in enumerate([(56, 56), (64, 64), (50, 90)]):
        x, picture = pictures(height, width, seed)
        expected = processor(images=picture, **options)
        patches, grid = reward.preprocess(x)
        assert grid.tolist() == expected["image_grid_thw"].tolist()
        difference = (patches - expected["pixel_values"]).abs()
        if (height, width) == (56, 56):  # no resize: the same arithmetic
            assert difference.max() < 1e-5
        else:  # PIL resizes uint8 and rounds, torch floats: measured max 0.016, one uint8 step after std
            assert difference.mean() < 0.01 and difference.max() < 0.05, (height, width, difference.max())


def test_loads_from_folder_and_scores_as_the_net_it_was_saved_from(reward, folder):
    _, net = folder
    x = torch.cat([pictures(64, 64, seed)[0] for seed in range(2)])
    scores = reward(x, PROMPTS)
    reference = HPSv3(model="tiny", dtype="float32", pixels=PIXELS)
    reference.net = net.eval()
    torch.testing.assert_close(scores.detach(), reference(x, PROMPTS).detach())
    assert scores.dtype == torch.float32 and scores.shape == (2,)
    assert (scores[0] - scores[1]).abs() > 1e-3  # the perturbed weights tell images apart


def test_score_is_mu_at_the_reward_token_and_batching_changes_nothing(reward):
    x = torch.cat([pictures(64, 64, seed)[0] for seed in range(2)])
    both = reward.mean_and_sigma(x, PROMPTS)
    alone = torch.cat([reward.mean_and_sigma(x[i : i + 1], [p]) for i, p in enumerate(PROMPTS)])
    torch.testing.assert_close(both, alone, atol=1e-5, rtol=1e-5)  # prompts differ in length: padded
    torch.testing.assert_close(reward(x, PROMPTS), both[:, 0])
    ids, _, reward_at = reward.tokenize(PROMPTS, 4)
    assert (ids[torch.arange(2), reward_at] == reward.reward_id).all()
    assert int((ids[1] == reward.reward_id).sum()) == 2  # the one in the prompt is not the one scored


def test_gradients_reach_every_pixel_batch(reward):
    x = torch.cat([pictures(70, 90, seed)[0] for seed in range(2)]).requires_grad_(True)
    reward(x, PROMPTS).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad.flatten(1).abs().sum(1) > 0).all()
    assert not any(p.requires_grad for p in reward.parameters())


def test_registered_as_reward_and_judge():
    from renegx.evaluate.judges import resolve_judge

    judge = resolve_judge("hpsv3", {"model": "tiny", "dtype": "float32", "pixels": PIXELS})
    assert judge.reward == "hpsv3" and judge.scale == 1.0
    reward = judge.build()
    assert isinstance(reward, HPSv3)
    assert isinstance(build_reward("hpsv3", model="tiny", pixels=PIXELS), HPSv3)


def test_bad_folders_fail_in_one_line(folder, tmp_path):
    root, _ = folder
    assert_one_line_error(RewardError, lambda: HPSv3(model="./no-such-folder"), "file not found: ./no-such")
    assert_one_line_error(RewardError, lambda: HPSv3(model=str(tmp_path)), "has no HPSv3.safetensors")
    (tmp_path / "HPSv3.safetensors").write_bytes(b"not a safetensors file")
    assert_one_line_error(
        RewardError, lambda: HPSv3(model=str(tmp_path), base=str(root)), "cannot read HPSv3 checkpoint"
    )
    torch.save({}, tmp_path / "HPSv3.pth")
    pickled = str(tmp_path / "HPSv3.pth")
    assert_one_line_error(RewardError, lambda: HPSv3(model=pickled, base=str(root)), "must be a .safetensors")
    assert_one_line_error(
        RewardError,
        lambda: HPSv3(model=str(root), base=str(tmp_path / "missing")),
        "HPSv3 base config folder not found",
    )
    assert_one_line_error(RewardError, lambda: HPSv3(model="tiny", dtype="float8"), "unknown dtype 'float8'")


def test_checkpoint_of_another_shape_is_refused_in_one_line(folder, tmp_path):
    from safetensors.torch import load_file, save_file

    root, _ = folder
    state = load_file(str(root / "HPSv3.safetensors"))
    state["rm_head.0.weight"] = state["rm_head.0.weight"][:, :8].contiguous()
    del state["rm_head.5.bias"]
    save_file(state, str(tmp_path / "HPSv3.safetensors"))
    message = assert_one_line_error(
        RewardError, lambda: HPSv3(model=str(tmp_path), base=str(root)), "does not fit", "rm_head.5.bias"
    )
    assert "rm_head.0.weight" in message
    del state["model.embed_tokens.weight"]
    save_file(state, str(tmp_path / "HPSv3.safetensors"))
    assert_one_line_error(
        RewardError, lambda: HPSv3(model=str(tmp_path), base=str(root)), "has no token embedding"
    )


def test_offline_hub_checkpoint_says_how_to_get_it(folder):
    message = assert_one_line_error(RewardError, lambda: HPSv3(base=str(folder[0])), "HPSv3.safetensors")
    assert "hf download MizzenAI/HPSv3 HPSv3.safetensors" in message


def test_weights_knows_what_hpsv3_needs():
    from renegx.cli.weights import config_needs

    reward = {"class_path": "renegx.rewards.HPSv3", "init_args": {}}
    needs = config_needs({"model": {"reward": reward}})
    assert [(n.key, n.source, n.pick) for n in needs] == [
        ("model.reward.init_args.model", "MizzenAI/HPSv3", "HPSv3.safetensors"),
        ("model.reward.init_args.base", "Qwen/Qwen2-VL-7B-Instruct", None),
    ]
    assert "*.safetensors" not in needs[1].files and "preprocessor_config.json" in needs[1].files
    assert config_needs({"model": {"reward": {**reward, "init_args": {"model": "tiny"}}}}) == []
