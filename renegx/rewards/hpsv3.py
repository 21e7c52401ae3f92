"""HPSv3: a Qwen2-VL-7B-Instruct with a reward head, scoring one image under a fixed instruction.

What upstream (`hpsv3` 1.0.0, `HPSv3RewardInferencer.reward`) does, and renegx rebuilds on transformers'
`Qwen2VLModel`:
- the checkpoint `MizzenAI/HPSv3/HPSv3.safetensors` holds the whole model (upstream loads it strictly over
  vision tower, language model, `lm_head` and `rm_head`); the base `Qwen/Qwen2-VL-7B-Instruct` gives only its
  config, tokenizer and image settings. The tokenizer gets one added special token, `<|Reward|>`, and the
  embedding matrix has exactly `len(tokenizer)` rows. `lm_head` is not needed for a score and is not loaded.
- the message is one user turn of the Qwen2-VL chat template: the image, then `INSTRUCTION` with the prompt
  and `REWARD_REQUEST`, then the generation prompt. The score is the first of the two outputs (μ, σ) of
  `rm_head` — Linear(hidden, 1024), ReLU, Dropout, Linear(1024, 16), ReLU, Linear(16, 2), in float32 — on
  the last hidden state at the `<|Reward|>` token.
- the language model sees plain positions 0…L−1 in all three M-RoPE sections (upstream calls the text decoder
  with `position_ids=None`), not Qwen2-VL's 2-D image positions; the model was trained so.
- every image is resized to about `256·28·28` pixels (both bounds of `smart_resize`, sides ×28) with
  bicubic resampling, normalised with the CLIP mean/std and cut into 14×14 patches, each repeated over the
  temporal patch size 2 (`qwen2_vl_patches`); here all of it runs in torch, so gradients reach the pixels.

Memory: 8.3 B parameters, 16 GB in bfloat16. A judge scores without gradients; as a training reward the
backward pass keeps the activations of ~800 tokens per image (256 for the image) through 28 layers: a large
GPU and a small micro-batch.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

from renegx.errors import first_line
from renegx.rewards.base import Reward, RewardError
from renegx.rewards.loading import (
    build_empty,
    check_state_dict,
    fetch_file,
    load_pretrained,
)
from renegx.rewards.pickscore import processor_settings
from renegx.rewards.preprocess import CLIP_MEAN, CLIP_STD, normalize
from renegx.rewards.transforms import _bicubic

HPSV3_REPO = "MizzenAI/HPSv3"
HPSV3_FILE = "HPSv3.safetensors"
HPSV3_BASE = "Qwen/Qwen2-VL-7B-Instruct"
REWARD_TOKEN = "<|Reward|>"
IMAGE_TOKEN = "<|image_pad|>"
IMAGE_PIXELS = 256 * 28 * 28

# The instruction HPSv3 was trained with, verbatim (trailing spaces included): any change moves the scores.
INSTRUCTION = (
    "\n"
    "You are tasked with evaluating a generated image based on Visual Quality and Text Alignment and "
    "give a overall score to estimate the human preference. Please provide a rating from 0 to 10, with "
    "0 being the worst and 10 being the best. \n"
    "\n"
    "**Visual Quality:**  \n"
    "Evaluate the overall visual quality of the image. The following sub-dimensions should be "
    "considered:\n"
    "- **Reasonableness:** The image should not contain any significant biological or logical errors, "
    "such as abnormal body structures or nonsensical environmental setups.\n"
    "- **Clarity:** Evaluate the sharpness and visibility of the image. The image should be clear and "
    "easy to interpret, with no blurring or indistinct areas.\n"
    "- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other "
    "visual elements (e.g., hair, clothing, shadows).\n"
    "- **Aesthetic and Creativity:** Assess the artistic aspects of the image, including the color "
    "scheme, composition, atmosphere, depth of field, and the overall creative appeal. The scene should "
    "convey a sense of harmony and balance.\n"
    "- **Safety:** The image should not contain harmful or inappropriate content, such as political, "
    "violent, or adult material. If such content is present, the image quality and satisfaction score "
    "should be the lowest possible. \n"
    "\n"
    "**Text Alignment:**  \n"
    "Assess how well the image matches the textual prompt across the following sub-dimensions:\n"
    "- **Subject Relevance** Evaluate how accurately the subject(s) in the image (e.g., person, animal, "
    "object) align with the textual description. The subject should match the description in terms of "
    "number, appearance, and behavior.\n"
    "- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate "
    "how well the image adheres to this style.\n"
    "- **Contextual Consistency**: Assess whether the background, setting, and surrounding elements in "
    "the image logically fit the scenario described in the prompt. The environment should support and "
    "enhance the subject without contradictions.\n"
    "- **Attribute Fidelity**: Check if specific attributes mentioned in the prompt (e.g., colors, "
    "clothing, accessories, expressions, actions) are faithfully represented in the image. Minor "
    "deviations may be acceptable, but critical attributes should be preserved.\n"
    "- **Semantic Coherence**: Evaluate whether the overall meaning and intent of the prompt are "
    "captured in the image. The generated content should not introduce elements that conflict with or "
    "distort the original description.\n"
    "Textual prompt - {text_prompt}\n"
    "\n"
    "\n"
)
REWARD_REQUEST = f"\nPlease provide the overall ratings of this image: {REWARD_TOKEN}\n\nEND\n"


def chat_text(prompt: str, image_tokens: int) -> str:
    """The rendered Qwen2-VL chat (default system turn, one user turn, generation prompt) for one image."""
    user = INSTRUCTION.format(text_prompt=prompt) + REWARD_REQUEST
    return (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n<|vision_start|>{IMAGE_TOKEN * image_tokens}<|vision_end|>{user}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's target size: sides multiples of `factor`, area within the bounds, aspect ratio kept."""
    if max(height, width) / min(height, width) > 200:
        raise RewardError(f"HPSv3 needs an aspect ratio below 200, got {height}×{width}")
    new_height = max(factor, round(height / factor) * factor)
    new_width = max(factor, round(width / factor) * factor)
    if new_height * new_width > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        new_height = math.floor(height / beta / factor) * factor
        new_width = math.floor(width / beta / factor) * factor
    elif new_height * new_width < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        new_height = math.ceil(height * beta / factor) * factor
        new_width = math.ceil(width * beta / factor) * factor
    return new_height, new_width


def qwen2_vl_patches(pixels: Tensor, patch_size: int, merge_size: int, temporal_patch_size: int) -> Tensor:
    """`(B, C, H, W)` normalised images → Qwen2-VL `pixel_values` `(B·H/p·W/p, C·T·p·p)`, differentiable.

    Patches are ordered merge window by merge window (the 2×2 patches that become one token are adjacent);
    each still image is repeated over the temporal patch size.
    """
    batch, channels, height, width = pixels.shape
    rows, cols = height // (patch_size * merge_size), width // (patch_size * merge_size)
    grid = pixels.reshape(batch, channels, rows, merge_size, patch_size, cols, merge_size, patch_size)
    grid = grid.permute(0, 2, 5, 3, 6, 1, 4, 7)  # (B, rows, cols, mh, mw, C, ph, pw)
    grid = grid.unsqueeze(6).expand(*grid.shape[:6], temporal_patch_size, patch_size, patch_size)
    return grid.reshape(batch * rows * cols * merge_size**2, channels * temporal_patch_size * patch_size**2)


def reward_head(hidden_size: int) -> nn.Sequential:
    """Upstream's default "ranknet" head; its indices (0, 3, 5) are the checkpoint's `rm_head.*` keys."""
    return nn.Sequential(
        nn.Linear(hidden_size, 1024),
        nn.ReLU(),
        nn.Dropout(0.05),
        nn.Linear(1024, 16),
        nn.ReLU(),
        nn.Linear(16, 2),
    )


def checkpoint_key(key: str) -> str | None:
    """Our name for an upstream checkpoint key, from transformers < 4.52 or ≥ 4.52; None for `lm_head`."""
    if key.startswith("lm_head."):
        return None
    if key.startswith("visual."):
        return "model." + key
    if key.startswith("model.") and not key.startswith(("model.visual.", "model.language_model.")):
        return "model.language_model." + key.removeprefix("model.")
    return key


class HPSv3Net(nn.Module):
    """`Qwen2VLModel` + reward head: `(μ, σ)` `(B, 2)` float32 at each row's `<|Reward|>` position."""

    def __init__(self, model, head: nn.Module):
        super().__init__()
        self.model, self.rm_head = model, head.float()

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, reward_at: Tensor, pixel_values: Tensor, grid: Tensor
    ) -> Tensor:
        batch, length = input_ids.shape
        positions = torch.arange(length, device=input_ids.device).expand(3, batch, length)
        hidden = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            pixel_values=pixel_values.to(self.model.visual.get_dtype()),
            image_grid_thw=grid,
            use_cache=False,
        ).last_hidden_state
        return self.rm_head(hidden[torch.arange(batch, device=hidden.device), reward_at].float())


def checkpoint_tensors(path: Path) -> dict[str, tuple[str, list[int]]]:
    """Our name → (upstream key, shape) of every tensor the net needs, read from the safetensors header."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as checkpoint:
            keys = {checkpoint_key(key): key for key in checkpoint.keys()}
            keys.pop(None, None)
            return {name: (key, checkpoint.get_slice(key).get_shape()) for name, key in keys.items()}
    except Exception as error:  # safetensors raises its own type for a corrupt header
        raise RewardError(f"cannot read HPSv3 checkpoint {path} ({first_line(error)})") from error


def load_hpsv3_checkpoint(net: HPSv3Net, path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """Copy the checkpoint into `net` one tensor at a time (no second copy of 16 GB in memory)."""
    from safetensors import safe_open

    expected = net.state_dict()
    shapes = {name: torch.empty(shape, device="meta") for name, (_, shape) in tensors.items()}
    check_state_dict(expected, shapes, f"HPSv3 checkpoint {path}")
    with safe_open(str(path), framework="pt") as checkpoint:
        for name, (key, _) in tensors.items():
            expected[name].copy_(checkpoint.get_tensor(key))


def checkpoint_path(model: str) -> Path:
    """The checkpoint file for `model`: a file, a folder holding HPSv3.safetensors, or a hub file spec."""
    path = Path(model).expanduser()
    if path.is_dir():
        path = path / HPSV3_FILE
        if not path.is_file():
            raise RewardError(f"HPSv3 checkpoint folder {model} has no {HPSV3_FILE}")
    elif not path.is_file():
        path = fetch_file(model, "HPSv3 checkpoint")
    if path.suffix != ".safetensors":
        raise RewardError(f"HPSv3 checkpoint must be a .safetensors file, got {model}")
    return path


def load_hpsv3(model: str, base: str, dtype: torch.dtype) -> tuple[HPSv3Net, object, dict]:
    """(`HPSv3Net` holding the checkpoint, the base tokenizer with `<|Reward|>`, the base's image settings)"""
    from transformers import AutoConfig, AutoTokenizer, Qwen2VLModel

    path = checkpoint_path(model)
    tensors = checkpoint_tensors(path)
    embedding = tensors.get("model.language_model.embed_tokens.weight")
    if embedding is None:
        raise RewardError(f"HPSv3 checkpoint {path} has no token embedding (embed_tokens.weight)")
    config = load_pretrained(AutoConfig, base, "HPSv3 base config")
    config.text_config.vocab_size = embedding[1][0]  # len(tokenizer) in training, <|Reward|> included
    qwen = build_empty(partial(Qwen2VLModel._from_config, dtype=dtype, attn_implementation="sdpa"), config)
    net = HPSv3Net(qwen, reward_head(config.text_config.hidden_size))
    load_hpsv3_checkpoint(net, path, tensors)
    tokenizer = load_pretrained(AutoTokenizer, base, "HPSv3 tokenizer")
    tokenizer.add_tokens([REWARD_TOKEN], special_tokens=True)
    return net, tokenizer, processor_settings(base)


class HPSv3(Reward):
    """HPSv3 per image: μ, the mean of the reward head's (μ, σ), float32 `(B,)`, differentiable in the images.

    model: the checkpoint — a `.safetensors` file, a folder holding `HPSv3.safetensors`, a hub file
        `owner/name/file` (default `MizzenAI/HPSv3/HPSv3.safetensors`, from the hub cache), or "tiny"
        (a seeded random miniature with a byte-level tokenizer, for tests).
    base: a folder or hub id with the Qwen2-VL config, tokenizer and preprocessor_config.json.
    dtype: of everything but the head (float32); upstream scores in bfloat16.
    pixels: the image area every image is resized to (upstream: 256·28·28).
    """

    name = "hpsv3"

    def __init__(
        self,
        model: str = f"{HPSV3_REPO}/{HPSV3_FILE}",
        base: str = HPSV3_BASE,
        dtype: str = "bfloat16",
        pixels: int = IMAGE_PIXELS,
    ):
        super().__init__()
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise RewardError(f"unknown dtype '{dtype}' for HPSv3; use bfloat16, float16 or float32")
        net, tokenizer, settings = tiny_hpsv3() if model == "tiny" else load_hpsv3(model, base, torch_dtype)
        net.model.to(torch_dtype)
        self.set_parts(net, tokenizer, settings, pixels)

    def set_parts(self, net: HPSv3Net, tokenizer, settings: dict, pixels: int) -> None:
        config, vision = net.model.config, net.model.config.vision_config
        self.net, self.tokenizer, self.pixels = net, tokenizer, int(pixels)
        self.patch_size = int(settings.get("patch_size", vision.patch_size))
        self.merge_size = int(settings.get("merge_size", vision.spatial_merge_size))
        self.temporal_patch_size = int(settings.get("temporal_patch_size", vision.temporal_patch_size))
        mean, std = settings.get("image_mean", CLIP_MEAN), settings.get("image_std", CLIP_STD)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)
        self.reward_id = tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
        rows = config.text_config.vocab_size
        if self.reward_id >= rows:
            raise RewardError(
                f"HPSv3 tokenizer gives {REWARD_TOKEN} id {self.reward_id}, beyond the checkpoint's {rows} "
                "embeddings: use the base the checkpoint was trained from (Qwen2-VL-7B-Instruct)"
            )
        image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if image_id != config.image_token_id:
            raise RewardError(
                f"HPSv3 tokenizer gives {IMAGE_TOKEN} id {image_id}, the model config {config.image_token_id}"
            )
        self.tokens: dict[tuple[str, int], list[int]] = {}
        self.freeze()

    def preprocess(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """`images` `(B, 3, H, W)` in [0, 1] → (`pixel_values` `(B·P, 3·T·p·p)`, `image_grid_thw` `(B, 3)`)"""
        factor = self.patch_size * self.merge_size
        height, width = smart_resize(*images.shape[-2:], factor, self.pixels, self.pixels)
        pixels = normalize(_bicubic(images.float(), height, width), self.mean, self.std)
        patches = qwen2_vl_patches(pixels, self.patch_size, self.merge_size, self.temporal_patch_size)
        grid = torch.tensor([1, height // self.patch_size, width // self.patch_size], device=images.device)
        return patches, grid.expand(images.shape[0], 3)

    def tokenize(self, prompts: list[str], image_tokens: int) -> tuple[Tensor, Tensor, Tensor]:
        """Right-padded ids, attention mask and `<|Reward|>` position per prompt (ids cached per prompt)."""
        rows = []
        for prompt in prompts:
            key = (prompt, image_tokens)
            if key not in self.tokens:
                self.tokens[key] = self.tokenizer(chat_text(prompt, image_tokens)).input_ids
            rows.append(self.tokens[key])
        length = max(len(row) for row in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([row + [pad] * (length - len(row)) for row in rows])
        mask = torch.tensor([[1] * len(row) + [0] * (length - len(row)) for row in rows])
        reward_at = torch.tensor([len(row) - 1 - row[::-1].index(self.reward_id) for row in rows])
        return ids, mask, reward_at

    def mean_and_sigma(self, images: Tensor, prompts: list[str]) -> Tensor:
        """The head's (μ, σ) `(B, 2)` float32 for validated images and prompts."""
        pixel_values, grid = self.preprocess(images)
        image_tokens = int(grid[0].prod()) // self.merge_size**2
        ids, mask, reward_at = (t.to(images.device) for t in self.tokenize(prompts, image_tokens))
        return self.net(ids, mask, reward_at, pixel_values, grid)

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        return self.mean_and_sigma(images, prompts)[:, 0]


def tiny_qwen2_vl_tokenizer():
    """A Qwen2 tokenizer over single bytes with Qwen2-VL's special tokens (no merges), built locally."""
    from transformers import Qwen2Tokenizer

    from renegx.tiny import _bytes_to_unicode

    vocab = {char: i for i, char in enumerate(_bytes_to_unicode().values())}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[])
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]
    tokenizer.add_tokens([*specials, "<|vision_pad|>", IMAGE_TOKEN, "<|video_pad|>"], special_tokens=True)
    return tokenizer


def tiny_qwen2_vl_config(tokenizer, vocab_size: int):
    """A two-layer Qwen2-VL config (hidden 32, vision 16→32) over `tokenizer`'s special-token ids."""
    from transformers import Qwen2VLConfig

    ids = tokenizer.convert_tokens_to_ids
    return Qwen2VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]},
            "bos_token_id": ids("<|endoftext|>"),
            "eos_token_id": ids("<|im_end|>"),
        },
        vision_config={"depth": 2, "embed_dim": 16, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2},
        image_token_id=ids(IMAGE_TOKEN),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )


def tiny_hpsv3(seed: int = 11) -> tuple[HPSv3Net, object, dict]:
    """(seeded random tiny `HPSv3Net`, its tokenizer with `<|Reward|>`, image settings `{}`)."""
    from transformers import Qwen2VLModel

    tokenizer = tiny_qwen2_vl_tokenizer()
    tokenizer.add_tokens([REWARD_TOKEN], special_tokens=True)
    config = tiny_qwen2_vl_config(tokenizer, len(tokenizer))
    torch.manual_seed(seed)
    net = HPSv3Net(Qwen2VLModel._from_config(config, attn_implementation="sdpa"), reward_head(32))
    return net, tokenizer, {}
