"""Negative embeddings on disk and in a pipeline call.

A negative embedding lives in the text encoder's *output* space: it is what diffusers pipelines take as
`negative_prompt_embeds`, `(1, L, D)` for one global embedding (SD1.5: `(1, 77, 768)`), `(N, L, D)` for a bank
of one row per prompt. renegx stores it as `*.safetensors` (tensors named after the pipeline arguments they
feed, string metadata describing where they came from) and also reads the official ReNeg `.bin` files, which
are `torch.save`d bare tensors, loaded with `weights_only=True` only (`renegx.negatives.format` reads every
kind of file; `renegx.negatives.official` says what each official file was trained for, and
`convert_official`, the `renegx convert` command, writes one as a renegx file with that provenance).

    negative = NegativeEmbedding.load("sd15.safetensors")
    images = pipe(prompts, **negative.for_pipeline(pipe, len(prompts))).images
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from renegx.files import atomic_path
from renegx.guidance import negative_start_index
from renegx.negatives.format import (
    ATTENTION_MASKS,
    EMBEDS_KEY,
    FORMAT,
    FORMAT_VERSION,
    MASK_KEY,
    NEGATIVE_FROM_KEY,
    POOLED_KEY,
    TENSOR_KEYS,
    EmbeddingError,
    check_floating,
    missing_attention_mask,
    read_embedding_safetensors,
    read_tensor_file,
    string_metadata,
    text_encoder_id,
)
from renegx.negatives.official import OFFICIAL_MODELS, official_model

PROMPTS_KEY = "prompts"  # metadata of a bank file: its prompts, a JSON list (renegx.negatives.bank)


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
        check_floating(EMBEDS_KEY, self.embeds, rank=3, expected_shape="(1, L, D) or (N, L, D)")
        rows, seq_len = self.embeds.shape[:2]
        if self.pooled is not None:
            check_floating(POOLED_KEY, self.pooled, rank=2, expected_shape=f"({rows}, P)")
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
            **string_metadata(self.metadata),
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

        `hidden_size` and `seq_len`, when given, must match the embedding's D and L. A bank file is refused:
        read as one embedding its rows would go to prompts by position, not by their text
        (`EmbeddingBank.load` reads it).
        """
        path = Path(path)
        if not path.is_file():
            raise EmbeddingError(f"embedding file not found: {path}")
        if path.suffix == ".safetensors":
            tensors, metadata = read_embedding_safetensors(path)
        elif path.suffix in (".bin", ".pt"):
            from renegx.negatives.official import (
                official_tensors,  # renegx.negatives.official builds on this module
            )

            tensors, metadata = official_tensors(read_tensor_file(path))
        else:
            raise EmbeddingError(f"expected a .safetensors, .bin or .pt embedding file, got {path}")
        if PROMPTS_KEY in metadata:
            count = len(tensors[EMBEDS_KEY])
            prompts = f"{count} prompt" + ("s" if count != 1 else "")
            raise EmbeddingError(
                f"{path} is an embedding bank of {prompts}, one row each; read as one embedding its "
                "rows would go to prompts by position: load it with EmbeddingBank.load "
                "(renegx.negatives.bank) or give it to infer or evaluate as --negative"
            )
        return cls.from_file(path, tensors, metadata, hidden_size=hidden_size, seq_len=seq_len)

    @classmethod
    def from_file(
        cls,
        path: Path,
        tensors: dict[str, torch.Tensor],
        metadata: dict[str, str],
        *,
        hidden_size: int | None = None,
        seq_len: int | None = None,
    ) -> NegativeEmbedding:
        """The embedding of `tensors` and `metadata` as read from `path`, checked as `load` checks them; an
        error names `path`. `EmbeddingBank.load` builds a bank's rows with it."""
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

    def for_pipeline(
        self,
        pipe: Any,
        batch_size: int,
        negative_prompt: str = "",
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Keyword arguments for `pipe(prompts, **kwargs)`, where `batch_size == len(prompts)`.

        Checks D (and L for CLIP text encoders) against the pipeline's text encoder(s); with SDXL's two
        encoders D is their sum and `pooled` is required; SD3's and FLUX's D is their transformer's joint
        width and `pooled` is required too (FLUX draws with it only when called with `true_cfg_scale > 1`).
        Returns `negative_prompt_embeds` `(B, L, D)`
        (plus `negative_pooled_prompt_embeds` `(B, P)` and `negative_prompt_attention_mask` `(B, L)` when
        present) on `pipe.device`, floating tensors in `pipe.dtype`. The pipeline itself repeats them per
        `num_images_per_prompt`. A negative that acts late (`negative_from` > 0) comes as the pipeline's
        own encoding of `negative_prompt` (the null, `""`, by default) and a `callback_on_step_end`
        (`LateNegative`) that swaps it in. Your own step callback and the tensors it reads go through here,
        not beside the returned keywords (they would collide): it runs first at every step.
        """
        self._check_pipeline(pipe)
        device, dtype = pipe.device, pipe.dtype
        if self.negative_from:
            late = self._late_for_pipeline(pipe, batch_size, negative_prompt, callback_on_step_end)
            inputs = list(dict.fromkeys(["prompt_embeds", *callback_on_step_end_tensor_inputs]))
            return {**late, "callback_on_step_end_tensor_inputs": inputs}
        if negative_prompt:
            raise EmbeddingError(
                f"negative_prompt {negative_prompt!r} would replace this learned negative, which acts at "
                "every step; a text negative_prompt can guide only the steps before a late negative "
                "(negative_from)"
            )
        kwargs = {EMBEDS_KEY: self.expand(batch_size, device=device, dtype=dtype)}
        if callback_on_step_end is not None:
            kwargs["callback_on_step_end"] = callback_on_step_end
            kwargs["callback_on_step_end_tensor_inputs"] = list(callback_on_step_end_tensor_inputs)
        if self.pooled is not None:
            kwargs[POOLED_KEY] = self._expand_rows(self.pooled, batch_size).to(device=device, dtype=dtype)
        mask = self.attention_mask
        if mask is None and _takes_attention_mask(pipe):
            # A T5 file saved without its mask (the official PixArt-α one): attend to every row it holds.
            mask = missing_attention_mask(self.seq_len).expand(self.embeds.shape[0], -1)
        if mask is not None:
            kwargs[MASK_KEY] = self._expand_rows(mask, batch_size).to(device=device)
        return kwargs

    def _late_for_pipeline(
        self, pipe: Any, batch_size: int, negative_prompt: str, then: Callable | None
    ) -> dict[str, Any]:
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
            "negative_prompt": [negative_prompt] * batch_size,
            "callback_on_step_end": LateNegative(negative, self.negative_from, first=then),
        }

    def _expand_rows(self, tensor: torch.Tensor, batch_size: int) -> torch.Tensor:
        """A `(1|N, ...)` companion tensor repeated to `batch_size` rows the same way as `expand`."""
        return tensor.expand(batch_size, *tensor.shape[1:]).contiguous() if self.kind == "global" else tensor

    def _check_pipeline(self, pipe: Any) -> None:
        """Match D, L and P against the pipeline's text encoders; skipped for a pipeline without one."""
        names = ("text_encoder", "text_encoder_2", "text_encoder_3")
        named = {name: getattr(pipe, name, None) for name in names}
        encoders = {name: encoder for name, encoder in named.items() if encoder is not None}
        if not encoders:
            return
        target = f"the pipeline's {' + '.join(encoders)}"
        config = getattr(getattr(pipe, "transformer", None), "config", None)
        if getattr(config, "joint_attention_dim", None):  # SD3's CLIP ‖ T5 rows, FLUX's T5 rows: its width
            pooled_size = config.pooled_projection_dim
            self.check_compatible(config.joint_attention_dim, target=target)  # L: the call's T5 length
        else:
            clip_lengths = [
                encoder.config.max_position_embeddings
                for encoder in encoders.values()
                if getattr(encoder.config, "model_type", None) == "clip_text_model"
            ]
            self.check_compatible(
                sum(encoder.config.hidden_size for encoder in encoders.values()),
                seq_len=min(clip_lengths) if clip_lengths else None,
                target=target,
            )
            second = encoders.get("text_encoder_2")
            pooled_size = second.config.projection_dim if second is not None else 0
        recorded = self.metadata.get("text_encoder_id")
        if recorded:
            actual = text_encoder_id(list(encoders.values()))
            if actual != recorded:
                raise EmbeddingError(
                    f"embedding was made for text encoder {recorded}, but {target} is {actual}; "
                    "a negative embedding only transfers between pipelines that share the text encoder"
                )
        if not pooled_size:
            return
        if self.pooled is None:
            raise EmbeddingError(
                f"the pipeline needs {POOLED_KEY} of shape (1, {pooled_size}), but this embedding has none"
            )
        if self.pooled.shape[1] != pooled_size:
            raise EmbeddingError(
                f"embedding pooled size {self.pooled.shape[1]} does not match the pipeline's pooled "
                f"projection size {pooled_size}"
            )


class LateNegative:
    """A diffusers `callback_on_step_end` that puts `negative` `(B, L, D)` in the negative half of the CFG
    batch from step index `negative_start_index(T, start_fraction)` on; the pipeline's null guides before.

    Diffusers calls it after each step with the conditioning of the next; `num_images_per_prompt` copies of
    each prompt sit side by side, as the pipeline repeats them. `first`, a callback of the same signature,
    runs before it at every step, and what it returns is kept (the swap sees its `prompt_embeds`).
    """

    def __init__(self, negative: torch.Tensor, start_fraction: float, first: Callable | None = None):
        self.negative, self.start_fraction, self.first = negative, start_fraction, first

    def __call__(self, pipe: Any, index: int, timestep: Any, tensors: dict[str, torch.Tensor]) -> dict:
        returned = dict(self.first(pipe, index, timestep, tensors) or {}) if self.first is not None else {}
        start = negative_start_index(pipe.num_timesteps, self.start_fraction)
        if index + 1 != start or not getattr(pipe, "do_classifier_free_guidance", True):
            return returned
        embeds = returned.get("prompt_embeds", tensors["prompt_embeds"])
        half = embeds.shape[0] // 2
        negative = self.negative.to(embeds).repeat_interleave(half // self.negative.shape[0], 0)
        return {**returned, "prompt_embeds": torch.cat([negative, embeds[half:]])}


def _takes_attention_mask(pipe: Any) -> bool:
    """Whether `pipe(...)` has a `negative_prompt_attention_mask` argument (T5 pipelines such as PixArt)."""
    if not callable(pipe):
        return False
    try:
        return MASK_KEY in inspect.signature(type(pipe).__call__).parameters
    except (TypeError, ValueError):
        return False


def _renegx_version() -> str:
    import renegx

    return getattr(renegx, "__version__", "unknown")


def convert_official(
    source: str | os.PathLike, target: str | os.PathLike, base_model: str, attention_mask: str = "all"
) -> Path:
    """Convert an official ReNeg `.bin` (a bare tensor) to a renegx `.safetensors` with its provenance.

    `base_model` is a preset (`sd1.4`, `sd1.5`, `sd2.1`, `pixart-alpha`) or its hub id; the tensor must have
    that model's shape. T5 models get `negative_prompt_attention_mask` (`attention_mask`: `all` or `empty`,
    see `renegx.negatives.official`).
    """
    model = official_model(base_model)
    if model is None:
        raise EmbeddingError(f"unknown --base-model '{base_model}'; known: {', '.join(OFFICIAL_MODELS)}")
    if attention_mask not in ATTENTION_MASKS:
        known = ", ".join(ATTENTION_MASKS)
        raise EmbeddingError(f"unknown --attention-mask '{attention_mask}'; known: {known}")
    source = Path(source)
    if not source.is_file():
        raise EmbeddingError(f"embedding file not found: {source}")
    if source.suffix not in (".bin", ".pt"):
        raise EmbeddingError(f"expected an official ReNeg .bin or .pt file to convert, got {source}")
    tensors = read_tensor_file(source)
    embeds = tensors[EMBEDS_KEY]
    shape = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else None
    if shape != model.shape:
        raise EmbeddingError(
            f"{source}: a {model.name} embedding has shape {model.shape}, "
            f"got {shape or type(embeds).__name__}"
        )
    metadata = {**model.metadata(), "source_file": source.name}
    mask = tensors.get(MASK_KEY)
    if model.needs_attention_mask and mask is None:
        mask = missing_attention_mask(model.shape[1], attention_mask)
        metadata["attention_mask"] = attention_mask
    embedding = NegativeEmbedding(embeds.float(), attention_mask=mask, metadata=metadata)
    return embedding.save(target)
