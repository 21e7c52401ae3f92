"""Parity with the official scoring code: HPSv2 (hpsv2's own open_clip), ImageReward (upstream BLIP), HPSv3.

The upstream packages need torchvision, which never enters the core environment, so these tests run in the
separate parity environment that `make parity` builds (torch + torchvision + open-clip-torch + timm, and the
hpsv2 / image-reward / hpsv3 wheels installed without their broken pins). Elsewhere they skip.

HPSv3 (`hpsv3` 1.0.0, the only release on PyPI) pins transformers 4.45.2 and imports trl, peft, deepspeed and
4.45-era trainer internals at module level; none of that is needed to score. So its scoring code — the
`Qwen2VLRewardModelBT` class, `HPSv3RewardInferencer.prepare_batch`, the instruction texts — is run from the
installed wheel's own source (only those definitions), with its vision helper `process_vision_info`, on the
transformers of this environment, behind a two-attribute shim for the 4.45 layout its forward reads.

Each test builds a tiny random-weight model of the real architecture with the upstream classes, saves its
state dict the way the upstream checkpoints are saved, loads that file through renegx, and compares:
- the model alone (identical pixel values and tokens): features/scores equal to float32 rounding;
- the whole scoring path (upstream preprocessing from PIL images vs our tensor preprocessing).
Upstream modules are imported without running their package `__init__` (which pulls unrelated training code),
with small shims for what transformers 5 removed; no upstream code is copied.
"""

from __future__ import annotations

import ast
import gzip
import importlib
import importlib.util
import json
import os
import sys
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Optional  # noqa: UP035  (hpsv3's signatures are evaluated with it)

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.parity
REASON = "needs open_clip, timm, torchvision and the hpsv2/image-reward/hpsv3 wheels: run `make parity`"
if os.environ.get("RENEGX_REQUIRE_PARITY"):  # `make parity`: a broken environment fails, never skips
    import open_clip
else:
    open_clip = pytest.importorskip("open_clip", reason=REASON)
    if any(importlib.util.find_spec(name) is None for name in ("timm", "hpsv2", "ImageReward", "hpsv3")):
        pytest.skip(REASON, allow_module_level=True)

from PIL import Image  # noqa: E402

from renegx.rewards import HPSv2, HPSv3, ImageReward  # noqa: E402
from renegx.rewards.clip_family import clip_image_features  # noqa: E402
from renegx.rewards.image_reward import MED_CONFIG, VISION, tiny_bert_tokenizer  # noqa: E402

PROMPTS = ["a red circle", "A Blue square, on grass!", "a red circle <|endoftext|> ok", "a red circle"]
# as-is (no resize), SD1.5 output, wide and tall (odd padding/cropping, strong upsampling)
SIZES = [(224, 224), (512, 512), (160, 300), (301, 97)]

# HPSv2: the same family as ViT-H-14 (exact GELU, class token, ln_pre, projections), tiny widths, real vocab.
TINY_HPS = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 8, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}


def pictures(height: int, width: int, seed: int) -> tuple[torch.Tensor, Image.Image]:
    """A smooth random RGB picture as (float (1, 3, H, W) in [0, 1] from uint8, the same PIL image)."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 5, 6, generator=generator)
    smooth = torch.nn.functional.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)
    uint8 = (smooth * 255).round().to(torch.uint8)
    return uint8.float() / 255, Image.fromarray(uint8[0].permute(1, 2, 0).numpy())


def perturb(module: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    """Move every parameter off its initial value (zero biases, unit norms), so no mapping slip hides."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)


def import_without_init(name: str, packages: list[str]):
    """Import module `name`, first registering `packages` as bare packages (their __init__ is not run)."""
    for package in packages:
        if package in sys.modules:
            continue
        parent, _, leaf = package.rpartition(".")
        if parent:
            path = [os.path.join(sys.modules[parent].__path__[0], leaf)]
        else:
            path = list(importlib.util.find_spec(package).submodule_search_locations)
        stub = types.ModuleType(package)
        stub.__path__ = path
        sys.modules[package] = stub
    return importlib.import_module(name)


# HPSv2 ------------------------------------------------------------------------------------------------------


def clip_tokenizer_folder(folder) -> str:
    """open_clip's BPE vocabulary (in its wheel) as a transformers CLIPTokenizer, pad "!" like laion's."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="!")
    tokenizer.save_pretrained(folder / "tokenizer")
    return str(folder / "tokenizer")


@pytest.fixture(scope="module")
def hps(tmp_path_factory):
    """(official hpsv2 model, its eval transform, open_clip tokenizer, our HPSv2 on the same weights)."""
    folder = tmp_path_factory.mktemp("hps")
    try:
        import turtle  # noqa: F401  (hpsv2's factory imports it by accident)
    except ImportError:
        sys.modules["turtle"] = types.SimpleNamespace(forward=None)
    # hpsv2 1.2.0 ships without its BPE vocabulary; its tokenizer module is open_clip's with that file.
    sys.modules["hpsv2.src.open_clip.tokenizer"] = importlib.import_module("open_clip.tokenizer")
    factory = import_without_init("hpsv2.src.open_clip", ["hpsv2", "hpsv2.src"])
    (folder / "renegx-tiny-hps.json").write_text(json.dumps(TINY_HPS))
    factory.add_model_config(folder / "renegx-tiny-hps.json")
    torch.manual_seed(0)
    model, _, preprocess_val = factory.create_model_and_transforms(
        "renegx-tiny-hps", None, precision="fp32", device="cpu", light_augmentation=True, output_dict=True
    )
    perturb(model, seed=1)
    model.eval()
    torch.save({"state_dict": model.state_dict()}, folder / "HPS_tiny.pt")
    ours = HPSv2(
        model=str(folder / "HPS_tiny.pt"), tokenizer=clip_tokenizer_folder(folder), architecture=TINY_HPS
    )
    return model, preprocess_val, open_clip.get_tokenizer("ViT-H-14"), ours


def test_hps_checkpoint_maps_onto_clip_model(hps):
    model, preprocess_val, tokenizer, ours = hps
    pixels = torch.stack([preprocess_val(pictures(h, w, seed)[1]) for seed, (h, w) in enumerate(SIZES)])
    tokens = tokenizer(PROMPTS)
    with torch.no_grad():
        expected = model(pixels, tokens)
        image = clip_image_features(ours.model, pixels)
        text = ours.encode_text(PROMPTS)
    torch.testing.assert_close(image, expected["image_features"], atol=2e-6, rtol=0)
    torch.testing.assert_close(text, expected["text_features"], atol=2e-6, rtol=0)


def test_hps_tokenizer_matches_open_clip(hps):
    _, _, tokenizer, ours = hps
    expected = tokenizer(PROMPTS)
    assert torch.equal(ours.tokenize(PROMPTS).input_ids, expected)


def test_hps_preprocessing_matches_resize_max_size(hps):
    _, preprocess_val, _, ours = hps
    for seed, (height, width) in enumerate(SIZES):
        x, picture = pictures(height, width, seed)
        torch.testing.assert_close(ours.preprocess(x)[0], preprocess_val(picture), atol=1e-5, rtol=0)


def test_hps_score_equals_official_hpsv2_score(hps):
    """hpsv2.score: preprocess_val(PIL) → model(image, text) → diag(image_features @ text_features.T)."""
    model, preprocess_val, tokenizer, ours = hps
    batch = [pictures(h, w, seed) for seed, (h, w) in enumerate(SIZES)]
    official = []
    with torch.no_grad():
        for (_, picture), prompt in zip(batch, PROMPTS, strict=True):
            output = model(preprocess_val(picture).unsqueeze(0), tokenizer([prompt]))
            official.append((output["image_features"] @ output["text_features"].T).diagonal()[0])
    # Our tensor path on each picture at its own size, as a training batch of that size would be scored.
    # hpsv2 resizes after ToTensor, so both paths resize the same floats: measured max difference 9e-8.
    scores = torch.cat([ours(x, [prompt]) for (x, _), prompt in zip(batch, PROMPTS, strict=True)])
    torch.testing.assert_close(scores.detach(), torch.stack(official), atol=1e-5, rtol=0)


# ImageReward ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_reward(tmp_path_factory):
    """(official ImageReward model on tiny BLIP parts, our ImageReward on its saved state dict)."""
    folder = tmp_path_factory.mktemp("imagereward")
    import transformers.modeling_utils as modeling_utils
    import transformers.pytorch_utils as pytorch_utils

    # transformers 5 moved/removed what med.py imports from modeling_utils (none of it runs when scoring).
    modeling_utils.apply_chunking_to_forward = pytorch_utils.apply_chunking_to_forward
    modeling_utils.prune_linear_layer = pytorch_utils.prune_linear_layer
    modeling_utils.find_pruneable_heads_and_indices = lambda *args: None
    names = [
        "fairscale",
        "fairscale.nn",
        "fairscale.nn.checkpoint",
        "fairscale.nn.checkpoint.checkpoint_activations",
    ]
    for name in names:  # vit.py imports fairscale's checkpoint_wrapper, used only with grad checkpointing
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules[names[-1]].checkpoint_wrapper = lambda module, **kwargs: module
    packages = ["ImageReward", "ImageReward.models", "ImageReward.models.BLIP"]
    upstream = import_without_init("ImageReward.ImageReward", packages)
    blip = importlib.import_module("ImageReward.models.BLIP.blip_pretrain")
    med = importlib.import_module("ImageReward.models.BLIP.med")
    vit = importlib.import_module("ImageReward.models.BLIP.vit")

    def invert_attention_mask(self, mask):  # PreTrainedModel's, as in transformers 4.x
        mask = (mask[:, None, :, :] if mask.dim() == 3 else mask[:, None, None, :]).to(self.dtype)
        return (1.0 - mask) * torch.finfo(self.dtype).min

    med.BertPreTrainedModel.init_weights = lambda self: None  # weights are drawn below
    med.BertModel.invert_attention_mask = invert_attention_mask
    med.BertModel.get_head_mask = lambda self, head_mask, layers: [None] * layers

    tokenizer = tiny_bert_tokenizer()
    vision = dict(VISION["tiny"], image_size=224, patch_size=32)
    blip.init_tokenizer = lambda: tokenizer  # BLIP's own reads bert-base-uncased from the hub
    blip.create_vit = lambda *args, **kwargs: (
        vit.VisionTransformer(
            img_size=vision["image_size"],
            patch_size=vision["patch_size"],
            embed_dim=vision["hidden_size"],
            depth=vision["num_hidden_layers"],
            num_heads=vision["num_attention_heads"],
        ),
        vision["hidden_size"],
    )
    med_config = dict(MED_CONFIG["tiny"], model_type="bert", add_cross_attention=True, encoder_width=768)
    (folder / "med_config.json").write_text(json.dumps(med_config))
    torch.manual_seed(0)
    model = upstream.ImageReward(med_config=str(folder / "med_config.json"), device="cpu")
    model.mlp = upstream.MLP(med_config["hidden_size"])
    perturb(model, seed=2)
    perturb(model.mlp, seed=3, scale=0.15)  # a head that spreads the scores, so equality means something
    model.eval()
    torch.save(model.state_dict(), folder / "ImageReward.pt")
    tokenizer.save_pretrained(folder / "tokenizer")
    ours = ImageReward(model=str(folder), tokenizer=str(folder / "tokenizer"), architecture=vision)
    return model, ours


def test_image_reward_checkpoint_maps_onto_blip(image_reward):
    """score_gard (the upstream differentiable path) vs ours on identical pixel values and tokens."""
    model, ours = image_reward
    pixels = torch.stack([model.preprocess(pictures(h, w, s)[1]) for s, (h, w) in enumerate(SIZES)])
    ids, mask = ours.tokenize(PROMPTS)
    with torch.no_grad():
        expected = model.score_gard(ids, mask, pixels).squeeze(-1)
        scores = ours.net(pixels, ids, mask)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    assert expected.std() > 0.05  # the weights make the scores differ, so equality means something


def test_image_reward_tokens_match_upstream(image_reward):
    model, ours = image_reward
    expected = model.blip.tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=35)
    ids, mask = ours.tokenize(PROMPTS)
    assert ids.tolist() == expected.input_ids and mask.tolist() == expected.attention_mask


def test_image_reward_preprocessing_matches_torchvision_on_pil(image_reward):
    model, ours = image_reward
    for seed, (height, width) in enumerate(SIZES):
        x, picture = pictures(height, width, seed)
        difference = (ours.preprocess(x)[0] - model.preprocess(picture)).abs()
        # PIL resizes uint8 and rounds; torch resizes floats. One uint8 step is 1/255/0.26 = 0.015 here.
        assert difference.mean() < 0.01 and difference.max() < 0.05, (height, width, difference.max())


def test_image_reward_score_equals_official_score(image_reward):
    """ImageReward.score(prompt, PIL image) — the official evaluation — vs our tensor path."""
    model, ours = image_reward
    batch = [pictures(h, w, seed) for seed, (h, w) in enumerate(SIZES)]
    with torch.no_grad():
        official = torch.tensor(
            [model.score(p, picture) for (_, picture), p in zip(batch, PROMPTS, strict=True)]
        )
    scores = torch.cat([ours(x, [prompt]) for (x, _), prompt in zip(batch, PROMPTS, strict=True)]).detach()
    exact_resize = torch.tensor([h == w == 224 for h, w in SIZES])
    torch.testing.assert_close(scores[exact_resize], official[exact_resize].float(), atol=1e-5, rtol=0)
    # Resized pictures differ only by PIL's uint8 resampling (see the preprocessing test): measured up to
    # 5e-3 (512→224, as for SD1.5 images) on scores spread ±0.3; ImageReward's own std is 1.
    assert np.allclose(scores.numpy(), official.numpy(), atol=2e-2), (scores, official)


# HPSv3 ------------------------------------------------------------------------------------------------------


def hpsv3_definitions(module: str, names: tuple[str, ...], namespace: dict) -> dict:
    """Run only the top-level definitions `names` of the installed hpsv3 file `module` in `namespace`."""
    path = Path(sys.modules["hpsv3"].__path__[0]) / module
    tree = ast.parse(path.read_text())
    kept = [
        node
        for node in tree.body
        if getattr(node, "name", None) in names
        or (isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) in names)
    ]
    exec(compile(ast.Module(body=kept, type_ignores=[]), str(path), "exec"), namespace)
    return namespace


class MergedVisual:
    """transformers 4.45's `Qwen2VLForConditionalGeneration.visual`: a call returns the merged embeddings."""

    def __init__(self, tower):
        self.tower = tower

    def get_dtype(self):
        return self.tower.get_dtype()

    def __call__(self, pixel_values, grid_thw):
        return self.tower(pixel_values, grid_thw=grid_thw).pooler_output


@pytest.fixture(scope="module")
def hpsv3(tmp_path_factory):
    """(upstream HPSv3RewardInferencer on a tiny Qwen2-VL, our HPSv3 on its saved state dict)."""
    from safetensors.torch import save_file
    from test_rewards_hpsv3 import write_tiny_folder
    from transformers import AutoConfig, AutoProcessor, Qwen2VLForConditionalGeneration, Qwen2VLModel

    folder = tmp_path_factory.mktemp("hpsv3")
    write_tiny_folder(folder)  # the base files; its checkpoint is replaced by upstream's below
    sys.modules.setdefault("requests", types.ModuleType("requests"))  # used only for images given as URLs
    vision = import_without_init("hpsv3.dataset.utils", ["hpsv3", "hpsv3.dataset"])

    class Transformers445Layout(Qwen2VLForConditionalGeneration):
        visual = property(lambda self: MergedVisual(self.model.visual))

    Qwen2VLModel.embed_tokens = property(lambda self: self.language_model.embed_tokens)
    namespace = {"torch": torch, "nn": torch.nn, "Optional": Optional, "List": list, "Mapping": Mapping}
    namespace["Qwen2VLForConditionalGeneration"] = Transformers445Layout
    namespace["process_vision_info"] = vision.process_vision_info
    texts = ("INSTRUCTION", "prompt_with_special_token", "prompt_without_special_token")
    hpsv3_definitions("dataset/data_collator_qwen.py", texts, namespace)
    hpsv3_definitions("model/qwen2vl_trainer.py", ("Qwen2VLRewardModelBT",), namespace)
    hpsv3_definitions("inference.py", ("HPSv3RewardInferencer",), namespace)

    # create_model_and_processor, as HPSv3_7B.yaml configures it
    processor = AutoProcessor.from_pretrained(folder, padding_side="right")
    processor.tokenizer.add_special_tokens({"additional_special_tokens": ["<|Reward|>"]})
    config = AutoConfig.from_pretrained(folder)
    config.text_config.vocab_size = len(processor.tokenizer)  # resize_token_embeddings(len(tokenizer))
    config.hidden_size = config.text_config.hidden_size  # 4.45's config is flat
    torch.manual_seed(0)
    model = namespace["Qwen2VLRewardModelBT"](
        config,
        output_dim=2,
        reward_token="special",
        special_token_ids=processor.tokenizer.convert_tokens_to_ids(["<|Reward|>"]),
        rm_head_type="ranknet",
    )
    model.config.pad_token_id = processor.tokenizer.pad_token_id
    perturb(model, seed=4, scale=0.2)
    model.eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "HPSv3.safetensors"))
    inferencer = object.__new__(namespace["HPSv3RewardInferencer"])
    inferencer.model, inferencer.processor, inferencer.device = model, processor, "cpu"
    inferencer.use_special_tokens = True
    yield inferencer, HPSv3(model=str(folder), base=str(folder), dtype="float32")
    del Qwen2VLModel.embed_tokens


def upstream_batch(inferencer, pils, prompts):
    """prepare_batch less `mm_token_type_ids` (transformers 5's processor adds it; 4.45's forward has none)"""
    batch = inferencer.prepare_batch(pils, prompts)
    batch.pop("mm_token_type_ids", None)
    return batch


HPS3_SIZES = [(448, 448), (512, 512), (160, 300), (301, 97)]  # as is (256·28·28 pixels), SD1.5, wide, tall


def test_hpsv3_tokens_match_upstream_batch(hpsv3):
    inferencer, ours = hpsv3
    batch = upstream_batch(inferencer, [pictures(448, 448, 0)[1]] * len(PROMPTS), PROMPTS)
    ids, mask, _ = ours.tokenize(PROMPTS, 256)
    assert torch.equal(ids, batch["input_ids"]) and torch.equal(mask, batch["attention_mask"])


def test_hpsv3_model_matches_upstream_on_the_same_inputs(hpsv3):
    inferencer, ours = hpsv3
    batch = upstream_batch(inferencer, [pictures(448, 448, s)[1] for s in range(len(PROMPTS))], PROMPTS)
    _, _, reward_at = ours.tokenize(PROMPTS, 256)
    with torch.no_grad():
        expected = inferencer.model(return_dict=True, **batch)["logits"]
        keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")
        ids, mask, pixels, grid = (batch[k] for k in keys)
        scores = ours.net(ids, mask, reward_at, pixels, grid)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)  # measured 2e-6 on μ about 11–12
    assert expected[:, 0].std() > 0.05  # the weights make the scores differ, so equality means something


def test_hpsv3_preprocessing_matches_upstream(hpsv3):
    inferencer, ours = hpsv3
    for seed, (height, width) in enumerate(HPS3_SIZES):
        x, picture = pictures(height, width, seed)
        batch = upstream_batch(inferencer, [picture], PROMPTS[:1])
        patches, grid = ours.preprocess(x)
        assert grid.tolist() == batch["image_grid_thw"].tolist()
        difference = (patches - batch["pixel_values"]).abs()
        if (height, width) == (448, 448):
            assert difference.max() < 1e-5
        else:  # PIL resizes uint8 and rounds, torch resizes floats: measured max 0.016 (one uint8 step)
            assert difference.mean() < 0.01 and difference.max() < 0.05, (height, width, difference.max())


def test_hpsv3_score_equals_upstream_reward(hpsv3):
    """HPSv3RewardInferencer.reward (PIL images, its message, processor and model): μ vs our tensor path."""
    inferencer, ours = hpsv3
    batch = [pictures(h, w, seed) for seed, (h, w) in enumerate(HPS3_SIZES)]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(batch))]
    official = []
    with torch.no_grad():
        for (_, picture), prompt in zip(batch, prompts, strict=True):
            inputs = upstream_batch(inferencer, [picture], [prompt])
            official.append(inferencer.model(return_dict=True, **inputs)["logits"][0, 0])
    official = torch.stack(official)
    scores = torch.cat([ours(x, [prompt]) for (x, _), prompt in zip(batch, prompts, strict=True)]).detach()
    torch.testing.assert_close(scores[0], official[0], atol=1e-5, rtol=0)  # 448×448: no resize anywhere
    # The resized pictures differ only by PIL's uint8 resampling: measured up to 0.015 on μ spread ±0.5.
    assert (scores - official).abs().max() < 0.05, (scores, official)
