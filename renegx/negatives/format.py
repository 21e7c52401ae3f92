"""The negative-embedding file format: its keys and metadata, its checks, and the readers of every file a
negative can come from (renegx's safetensors, `torch.save`d tensors read with `weights_only=True` only).

docs/design.md §3 describes the format; `renegx.negatives.embedding` builds on this module.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from renegx.errors import RenegxError, first_line

FORMAT = "renegx.negative-embedding"
FORMAT_VERSION = "1"
SUPPORTED_FORMAT_VERSIONS = ("1",)

NEGATIVE_FROM_KEY = "negative_from"  # metadata: the fraction of the schedule before which the null guides

EMBEDS_KEY = "negative_prompt_embeds"
POOLED_KEY = "negative_pooled_prompt_embeds"
MASK_KEY = "negative_prompt_attention_mask"
TENSOR_KEYS = (EMBEDS_KEY, POOLED_KEY, MASK_KEY)
ATTENTION_MASKS = ("all", "empty")  # what `missing_attention_mask` can give a T5 file saved without one


class EmbeddingError(RenegxError):
    """A negative embedding that cannot be read, saved or used as asked; the message is one line."""


def text_encoder_id(encoders: list[Any]) -> str:
    """What a negative embedding is tied to: `model_type/h<hidden>/l<layers>/v<vocab>`, `+` between encoders.

    It names the architecture (SD1.x's CLIP-L is `clip_text_model/h768/l12/v49408`), so pipelines that load
    the same encoder (ControlNet, AnimateDiff over SD1.5) match, and encoders of equal width but another
    depth or vocabulary do not.
    """
    parts = []
    for encoder in encoders:
        config = encoder.config
        layers = getattr(config, "num_hidden_layers", None)
        parts.append(
            f"{config.model_type}/h{config.hidden_size}/l{layers}/v{getattr(config, 'vocab_size', None)}"
        )
    return "+".join(parts)


def missing_attention_mask(seq_len: int, kind: str = "all") -> torch.Tensor:
    """`(1, seq_len)` int64 mask for a T5 file saved without one (the official PixArt-α file, see
    `renegx.negatives.official`): every row (`all`) or the empty prompt's (`empty`)."""
    mask = torch.ones(1, seq_len, dtype=torch.long)
    if kind == "empty":
        mask[:, 1:] = 0
    return mask


def check_floating(name: str, tensor: Any, rank: int, expected_shape: str) -> None:
    """Raise unless `tensor` is a non-empty, finite, floating-point tensor of the given rank."""
    if not isinstance(tensor, torch.Tensor):
        raise EmbeddingError(f"expected {name} to be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.ndim != rank or tensor.numel() == 0:
        raise EmbeddingError(f"expected {name} of shape {expected_shape}, got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise EmbeddingError(f"expected {name} to be floating point, got dtype {tensor.dtype}")
    non_finite = int((~torch.isfinite(tensor)).sum())
    if non_finite:
        raise EmbeddingError(
            f"expected {name} to be finite, got {non_finite} NaN/Inf values of {tensor.numel()}"
        )


def string_metadata(metadata: dict[str, Any]) -> dict[str, str]:
    """`metadata` with str/int/float/bool values turned into strings; anything else is refused."""
    strings = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, (str, int, float)):
            raise EmbeddingError(
                f"expected metadata of str keys and str/int/float values, got {key!r}: {type(value).__name__}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise EmbeddingError(f"expected a finite number for metadata {key!r}, got {value}")
        strings[key] = str(value)
    return strings


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a `.safetensors` file, read without its tensors; {} for a path that is no readable
    safetensors file (loading it reports what is wrong)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return {}
    try:
        with safe_open(path, framework="pt") as reader:
            return dict(reader.metadata() or {})
    except SafetensorError:
        return {}


def read_embedding_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors under `TENSOR_KEYS` and the metadata of a safetensors file that holds a negative embedding."""
    try:
        with safe_open(path, framework="pt") as reader:
            metadata = dict(reader.metadata() or {})
            keys = list(reader.keys())
            tensors = {key: reader.get_tensor(key) for key in keys if key in TENSOR_KEYS}
    except SafetensorError as err:
        raise EmbeddingError(f"{path} is not a safetensors file ({first_line(err)})") from None
    if EMBEDS_KEY not in tensors:
        found = ", ".join(sorted(keys)) or "none"
        raise EmbeddingError(
            f"{path} is not a renegx negative embedding: "
            f"expected a {EMBEDS_KEY} tensor, found tensors: {found}"
        )
    version = metadata.get("format_version")
    if metadata.get("format") == FORMAT and version not in SUPPORTED_FORMAT_VERSIONS:
        raise EmbeddingError(
            f"{path} has format_version {version!r}, this renegx reads {', '.join(SUPPORTED_FORMAT_VERSIONS)}"
        )
    return tensors, metadata


def read_plain_torch_file(path: Path) -> Any:
    """A `torch.save`d file read with `weights_only=True`: tensors and plain containers, nothing else."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refuses anything but tensors and plain containers
        raise EmbeddingError(
            f"refusing to unpickle {path}: it is not a plain tensor file ({first_line(err)})"
        ) from None
    except Exception as err:  # torch raises KeyError, RuntimeError, EOFError... on files it cannot parse
        raise EmbeddingError(
            f"{path} is not a readable torch tensor file ({type(err).__name__}: {first_line(err)})"
        ) from None


def read_tensor_file(path: Path) -> dict[str, torch.Tensor]:
    """`{EMBEDS_KEY: tensor, ...}` from a `torch.save`d bare tensor (official ReNeg) or a dict of tensors."""
    content = read_plain_torch_file(path)
    if isinstance(content, torch.Tensor):
        return {EMBEDS_KEY: content}
    if isinstance(content, dict) and EMBEDS_KEY in content:
        return {key: value for key, value in content.items() if key in TENSOR_KEYS}
    if isinstance(content, dict) and len(content) == 1:
        return {EMBEDS_KEY: next(iter(content.values()))}
    found = type(content).__name__
    if isinstance(content, dict):
        found = f"dict with keys {', '.join(map(str, content))}"
    raise EmbeddingError(
        f"{path}: expected a tensor or a dict holding {EMBEDS_KEY} or a single tensor, found {found}"
    )
