"""Negative embeddings on disk and in a pipeline call.

A negative embedding lives in the text encoder's *output* space: it is what diffusers pipelines take as
`negative_prompt_embeds`, `(1, L, D)` for one global embedding (SD1.5: `(1, 77, 768)`), `(N, L, D)` for a bank
of one row per prompt. renegx stores it as `*.safetensors` (tensors named after the pipeline arguments they
feed, string metadata describing where they came from) and also reads the official ReNeg `.bin` files, which
are `torch.save`d bare tensors, loaded with `weights_only=True` only (what they were trained for, and their
conversion, `python -m renegx.embedding convert`, are `renegx.official`'s).

    negative = NegativeEmbedding.load("sd15.safetensors")
    images = pipe(prompts, **negative.for_pipeline(pipe, len(prompts))).images
"""

from __future__ import annotations

import inspect
import math
import os
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from renegx.errors import RenegxError
from renegx.files import atomic_path
from renegx.guidance import negative_start_index

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


@dataclass
class NegativeEmbedding:
    """Negative prompt embeddings for a diffusers pipeline, with their provenance.

    embeds: `negative_prompt_embeds`, `(1, L, D)` global or `(N, L, D)` bank, floating point, finite.
    pooled: `negative_pooled_prompt_embeds`, `(1|N, P)`, for models with pooled text embeddings (SDXL).
    attention_mask: `negative_prompt_attention_mask`, `(1|N, L)`, for text encoders that need one (T5).
    metadata: string key/values saved in the file's `__metadata__` (docs/design.md §3).
    """

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_floating(EMBEDS_KEY, self.embeds, rank=3, expected_shape="(1, L, D) or (N, L, D)")
        rows, seq_len = self.embeds.shape[:2]
        if self.pooled is not None:
            _check_floating(POOLED_KEY, self.pooled, rank=2, expected_shape=f"({rows}, P)")
            if self.pooled.shape[0] != rows:
                raise EmbeddingError(
                    f"expected {POOLED_KEY} of shape ({rows}, P) to match {EMBEDS_KEY}, "
                    f"got shape {tuple(self.pooled.shape)}"
                )
        mask = self.attention_mask
        if mask is not None and (not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (rows, seq_len)):
            actual = f"shape {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise EmbeddingError(
                f"expected {MASK_KEY} of shape ({rows}, {seq_len}) to match {EMBEDS_KEY}, got {actual}"
            )
        _ = self.negative_from  # a bad recorded start fails here, not halfway through a sampling run

    def _tensors(self) -> dict[str, torch.Tensor]:
        """The tensors that are set, under the pipeline argument names they feed."""
        tensors = {EMBEDS_KEY: self.embeds, POOLED_KEY: self.pooled, MASK_KEY: self.attention_mask}
        return {key: tensor for key, tensor in tensors.items() if tensor is not None}

    @property
    def kind(self) -> str:
        """Either "global" (one `(1, L, D)` row shared by every prompt) or "bank" (one row per prompt)."""
        return "global" if self.embeds.shape[0] == 1 and self.metadata.get("kind") != "bank" else "bank"

    @property
    def negative_from(self) -> float:
        """Where in the schedule this negative starts to act, a fraction in [0, 1) (metadata `negative_from`,
        recorded by training with `model.negative_from`); the model's null guides the steps before.
        0: every step."""
        text = self.metadata.get(NEGATIVE_FROM_KEY)
        if text is None:
            return 0.0
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not 0 <= value < 1:
            raise EmbeddingError(f"metadata {NEGATIVE_FROM_KEY} must be a fraction in [0, 1), got {text!r}")
        return value

    def start_index(self, num_steps: int) -> int:
        """The first of `num_steps` step indices this negative guides (`negative_from`; the null guides the
        steps before): 0 unless it acts late, `num_steps` when it acts on none of them."""
        return negative_start_index(num_steps, self.negative_from)

    @property
    def hidden_size(self) -> int:
        """D, the text encoder's hidden size."""
        return self.embeds.shape[2]

    @property
    def seq_len(self) -> int:
        """L, the number of token positions."""
        return self.embeds.shape[1]

    def save(self, path: str | os.PathLike, extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
        """Write the embedding to a `.safetensors` file atomically (tensors on CPU in their own dtype).

        `extra_tensors` are stored beside the embedding's own (e.g. a bank's global fallback); `load` ignores
        them, so their names must differ from `TENSOR_KEYS`.
        """
        path = Path(path)
        if path.suffix != ".safetensors":
            raise EmbeddingError(f"expected a .safetensors path to save a negative embedding, got {path}")
        extra = extra_tensors or {}
        clashing = sorted(set(extra) & set(TENSOR_KEYS))
        if clashing:
            raise EmbeddingError(f"extra tensors must not reuse the embedding's names: {', '.join(clashing)}")
        tensors = {
            key: tensor.detach().to("cpu", copy=True).contiguous()
            for key, tensor in {**self._tensors(), **extra}.items()
        }
        metadata = {
            **_string_metadata(self.metadata),
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "space": "text-encoder-output",
            "hidden_size": str(self.hidden_size),
            "seq_len": str(self.seq_len),
            "created_by": f"renegx {_renegx_version()}",
        }
        with atomic_path(path) as temporary:
            save_file(tensors, temporary, metadata=metadata)
        return path

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, hidden_size: int | None = None, seq_len: int | None = None
    ) -> NegativeEmbedding:
        """Read a renegx `.safetensors` file or an official ReNeg `.bin`/`.pt` tensor, validated.

        `hidden_size` and `seq_len`, when given, must match the embedding's D and L.
        """
        path = Path(path)
        if not path.is_file():
            raise EmbeddingError(f"embedding file not found: {path}")
        if path.suffix == ".safetensors":
            tensors, metadata = _read_safetensors(path)
        elif path.suffix in (".bin", ".pt"):
            from renegx.official import official_tensors  # renegx.official builds on this module

            tensors, metadata = official_tensors(read_tensor_file(path))
        else:
            raise EmbeddingError(f"expected a .safetensors, .bin or .pt embedding file, got {path}")
        try:
            embedding = cls(
                embeds=tensors[EMBEDS_KEY],
                pooled=tensors.get(POOLED_KEY),
                attention_mask=tensors.get(MASK_KEY),
                metadata=metadata,
            )
            embedding.check_compatible(hidden_size, seq_len)
        except EmbeddingError as err:
            raise EmbeddingError(f"{path}: {err}") from None
        return embedding

    def check_compatible(
        self, hidden_size: int | None, seq_len: int | None = None, target: str = "the text encoder"
    ) -> None:
        """Raise `EmbeddingError` unless D equals `hidden_size` and L equals `seq_len` (each when given)."""
        if hidden_size is not None and self.hidden_size != hidden_size:
            raise EmbeddingError(
                f"embedding hidden size {self.hidden_size} does not match {target}'s {hidden_size}"
            )
        if seq_len is not None and self.seq_len != seq_len:
            raise EmbeddingError(
                f"embedding sequence length {self.seq_len} does not match {target}'s {seq_len}"
            )

    def expand(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """`embeds` as `(batch_size, L, D)`: a global embedding repeated, a bank of N == batch_size as is."""
        rows = self.embeds.shape[0]
        if batch_size < 1:
            raise EmbeddingError(f"expected a batch size of at least 1, got {batch_size}")
        if self.kind == "bank" and rows != batch_size:
            raise EmbeddingError(
                f"a bank of {rows} negative embeddings needs a batch of {rows} prompts, "
                f"got batch size {batch_size}"
            )
        return self.embeds.expand(batch_size, -1, -1).to(device=device, dtype=dtype).contiguous()

    def for_pipeline(self, pipe: Any, batch_size: int) -> dict[str, torch.Tensor]:
        """Keyword arguments for `pipe(prompts, **kwargs)`, where `batch_size == len(prompts)`.

        Checks D (and L for CLIP text encoders) against the pipeline's text encoder(s); with SDXL's two
        encoders D is their sum and `pooled` is required. Returns `negative_prompt_embeds` `(B, L, D)`
        (plus `negative_pooled_prompt_embeds` `(B, P)` and `negative_prompt_attention_mask` `(B, L)` when
        present) on `pipe.device`, floating tensors in `pipe.dtype`. The pipeline itself repeats them per
        `num_images_per_prompt`. A negative that acts late (`negative_from` > 0) comes as the pipeline's own
        null (`negative_prompt=""`) and a `callback_on_step_end` (`LateNegative`) that swaps it in.
        """
        self._check_pipeline(pipe)
        device, dtype = pipe.device, pipe.dtype
        if self.negative_from:
            return self._late_for_pipeline(pipe, batch_size)
        kwargs = {EMBEDS_KEY: self.expand(batch_size, device=device, dtype=dtype)}
        if self.pooled is not None:
            kwargs[POOLED_KEY] = self._expand_rows(self.pooled, batch_size).to(device=device, dtype=dtype)
        mask = self.attention_mask
        if mask is None and _takes_attention_mask(pipe):
            # A T5 file saved without its mask (the official PixArt-α one): attend to every row it holds.
            mask = missing_attention_mask(self.seq_len).expand(self.embeds.shape[0], -1)
        if mask is not None:
            kwargs[MASK_KEY] = self._expand_rows(mask, batch_size).to(device=device)
        return kwargs

    def _late_for_pipeline(self, pipe: Any, batch_size: int) -> dict[str, Any]:
        if self.pooled is not None or self.attention_mask is not None or _takes_attention_mask(pipe):
            swappable = False
        else:
            swappable = "prompt_embeds" in getattr(pipe, "_callback_tensor_inputs", ())
        if not swappable:
            raise EmbeddingError(
                f"this negative acts from {self.negative_from:g} of the schedule (metadata "
                f"{NEGATIVE_FROM_KEY}) and {type(pipe).__name__} cannot swap it in mid-run; draw with "
                "renegx's samplers (infer.py --sampler cfg)"
            )
        negative = self.expand(batch_size, device=pipe.device, dtype=pipe.dtype)
        return {
            "negative_prompt": [""] * batch_size,
            "callback_on_step_end": LateNegative(negative, self.negative_from),
            "callback_on_step_end_tensor_inputs": ["prompt_embeds"],
        }

    def _expand_rows(self, tensor: torch.Tensor, batch_size: int) -> torch.Tensor:
        """A `(1|N, ...)` companion tensor repeated to `batch_size` rows the same way as `expand`."""
        return tensor.expand(batch_size, *tensor.shape[1:]).contiguous() if self.kind == "global" else tensor

    def _check_pipeline(self, pipe: Any) -> None:
        """Match D, L and P against the pipeline's text encoders; skipped for a pipeline without one."""
        named = {name: getattr(pipe, name, None) for name in ("text_encoder", "text_encoder_2")}
        encoders = {name: encoder for name, encoder in named.items() if encoder is not None}
        if not encoders:
            return
        clip_lengths = [
            encoder.config.max_position_embeddings
            for encoder in encoders.values()
            if getattr(encoder.config, "model_type", None) == "clip_text_model"
        ]
        target = f"the pipeline's {' + '.join(encoders)}"
        self.check_compatible(
            sum(encoder.config.hidden_size for encoder in encoders.values()),
            seq_len=min(clip_lengths) if clip_lengths else None,
            target=target,
        )
        recorded = self.metadata.get("text_encoder_id")
        if recorded:
            actual = text_encoder_id(list(encoders.values()))
            if actual != recorded:
                raise EmbeddingError(
                    f"embedding was made for text encoder {recorded}, but {target} is {actual}; "
                    "a negative embedding only transfers between pipelines that share the text encoder"
                )
        if "text_encoder_2" not in encoders:
            return
        pooled_size = encoders["text_encoder_2"].config.projection_dim
        if self.pooled is None:
            raise EmbeddingError(
                f"the pipeline's text_encoder_2 needs {POOLED_KEY} of shape (1, {pooled_size}), "
                "but this embedding has none"
            )
        if self.pooled.shape[1] != pooled_size:
            raise EmbeddingError(
                f"embedding pooled size {self.pooled.shape[1]} does not match "
                f"the pipeline's text_encoder_2 projection size {pooled_size}"
            )


class LateNegative:
    """A diffusers `callback_on_step_end` that puts `negative` `(B, L, D)` in the negative half of the CFG
    batch from step index `negative_start_index(T, start_fraction)` on; the pipeline's null guides before.

    Diffusers calls it after each step with the conditioning of the next; `num_images_per_prompt` copies of
    each prompt sit side by side, as the pipeline repeats them.
    """

    def __init__(self, negative: torch.Tensor, start_fraction: float):
        self.negative, self.start_fraction = negative, start_fraction

    def __call__(self, pipe: Any, index: int, timestep: Any, tensors: dict[str, torch.Tensor]) -> dict:
        start = negative_start_index(pipe.num_timesteps, self.start_fraction)
        if index + 1 != start or not getattr(pipe, "do_classifier_free_guidance", True):
            return {}
        embeds = tensors["prompt_embeds"]
        half = embeds.shape[0] // 2
        negative = self.negative.to(embeds).repeat_interleave(half // self.negative.shape[0], 0)
        return {"prompt_embeds": torch.cat([negative, embeds[half:]])}


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
    `renegx.official`): every row (`all`) or the empty prompt's (`empty`)."""
    mask = torch.ones(1, seq_len, dtype=torch.long)
    if kind == "empty":
        mask[:, 1:] = 0
    return mask


def _takes_attention_mask(pipe: Any) -> bool:
    """Whether `pipe(...)` has a `negative_prompt_attention_mask` argument (T5 pipelines such as PixArt)."""
    if not callable(pipe):
        return False
    try:
        return MASK_KEY in inspect.signature(type(pipe).__call__).parameters
    except (TypeError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    """`python -m renegx.embedding convert old.bin new.safetensors --base-model sd1.5`: the official files'
    conversion, which lives in `renegx.official`."""
    from renegx.official import main as convert_main  # renegx.official builds on this module

    return convert_main(argv, prog="python -m renegx.embedding")


def _check_floating(name: str, tensor: Any, rank: int, expected_shape: str) -> None:
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


def _string_metadata(metadata: dict[str, Any]) -> dict[str, str]:
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


def _renegx_version() -> str:
    import renegx

    return getattr(renegx, "__version__", "unknown")


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors under `TENSOR_KEYS` and the metadata of a safetensors file that holds a negative embedding."""
    try:
        with safe_open(path, framework="pt") as reader:
            metadata = dict(reader.metadata() or {})
            keys = list(reader.keys())
            tensors = {key: reader.get_tensor(key) for key in keys if key in TENSOR_KEYS}
    except SafetensorError as err:
        raise EmbeddingError(f"{path} is not a safetensors file ({_first_line(err)})") from None
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
            f"refusing to unpickle {path}: it is not a plain tensor file ({_first_line(err)})"
        ) from None
    except Exception as err:  # torch raises KeyError, RuntimeError, EOFError... on files it cannot parse
        raise EmbeddingError(
            f"{path} is not a readable torch tensor file ({type(err).__name__}: {_first_line(err)})"
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


def _first_line(err: BaseException) -> str:
    """The telling line of an exception message (torch's weights_only errors are paragraphs)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    telling = [line for line in lines if "unsupported" in line.lower()]
    return (telling or lines or [type(err).__name__])[0]


if __name__ == "__main__":
    sys.exit(main())
