"""Embedding banks: one negative embedding per prompt, looked up by the prompt's exact text.

A bank file is a negative-embedding file (docs/design.md, "Embedding files") of kind `bank`:
- `negative_prompt_embeds` `(N, L, D)` (and `negative_pooled_prompt_embeds` `(N, P)` /
  `negative_prompt_attention_mask` `(N, L)` where the model has them); row i belongs to prompt i;
- metadata `prompts`: the N prompts as a JSON list of their exact text, each at most once;
- optionally a global fallback for prompts the bank does not hold: the same tensors for one row, named with a
  `fallback_` prefix (`fallback_negative_prompt_embeds` `(1, L, D)`, ...).

    bank = EmbeddingBank.load("bank.safetensors")
    images = pipe(prompts, **bank.for_prompts(pipe, prompts)).images
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from renegx.negatives.embedding import PROMPTS_KEY, NegativeEmbedding
from renegx.negatives.format import (
    EMBEDS_KEY,
    MASK_KEY,
    POOLED_KEY,
    TENSOR_KEYS,
    EmbeddingError,
    read_embedding_safetensors,
    read_safetensors_metadata,
)

FALLBACK_PREFIX = "fallback_"
FALLBACK_CHOICES = ("global", "error")


class BankError(EmbeddingError):
    """A bank that cannot be read, saved or used for the given prompts; the message is one line."""


@dataclass
class EmbeddingBank:
    """Per-prompt negative embeddings with an optional global fallback.

    rows: the `(N, L, D)` embeddings (plus companions) and the file metadata; its kind is always "bank".
    prompts: the N prompts, row i for `prompts[i]`; exact text, no repeats.
    fallback: a global `(1, L, D)` embedding (same L, D and companions) for prompts not in the bank.
    """

    rows: NegativeEmbedding
    prompts: list[str]
    fallback: NegativeEmbedding | None = None
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not all(isinstance(prompt, str) for prompt in self.prompts):
            raise BankError("expected the bank's prompts to be a list of strings")
        count = self.rows.embeds.shape[0]
        if len(self.prompts) != count:
            raise BankError(
                f"a bank of {count} embedding rows needs {count} prompts, got {len(self.prompts)}"
            )
        self._index = {prompt: row for row, prompt in enumerate(self.prompts)}
        if len(self._index) != count:
            repeated = next(p for row, p in enumerate(self.prompts) if self._index[p] != row)
            raise BankError(
                f"the bank lists prompt {_quote(repeated)} more than once; prompts must be unique"
            )
        if self.fallback is not None:
            self._check_fallback(self.fallback)

    def _check_fallback(self, fallback: NegativeEmbedding) -> None:
        if fallback.embeds.shape[0] != 1:
            raise BankError(f"expected a fallback of one row, got {fallback.embeds.shape[0]} rows")
        fallback.check_compatible(self.rows.hidden_size, self.rows.seq_len, target="the bank rows")
        for name, own, other in (
            ("pooled", self.rows.pooled, fallback.pooled),
            ("attention_mask", self.rows.attention_mask, fallback.attention_mask),
        ):
            if (own is None) != (other is None) or (own is not None and own.shape[1:] != other.shape[1:]):
                raise BankError(f"the fallback's {name} does not match the bank rows'")

    @property
    def metadata(self) -> dict[str, str]:
        return self.rows.metadata

    def __len__(self) -> int:
        return len(self.prompts)

    def __contains__(self, prompt: object) -> bool:
        return prompt in self._index

    def unknown(self, prompts: list[str]) -> list[str]:
        """The prompts (in order, without repeats) that have no row of their own."""
        return list(dict.fromkeys(p for p in prompts if p not in self._index))

    # -- files ----------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the bank atomically: rows, prompts in the metadata, the fallback as `fallback_*` tensors."""
        rows = NegativeEmbedding(
            self.rows.embeds,
            self.rows.pooled,
            self.rows.attention_mask,
            metadata={
                **self.rows.metadata,
                "kind": "bank",
                PROMPTS_KEY: json.dumps(self.prompts, ensure_ascii=False),
            },
        )
        extra = {}
        if self.fallback is not None:
            extra = {FALLBACK_PREFIX + key: value for key, value in self.fallback._tensors().items()}
        return rows.save(path, extra_tensors=extra)

    @staticmethod
    def is_bank_file(path: str | os.PathLike) -> bool:
        """Whether `path` is a bank's file (a safetensors file whose metadata lists its prompts), read without
        its tensors: such a file is loaded with `EmbeddingBank.load`, never as one `NegativeEmbedding`."""
        return PROMPTS_KEY in read_safetensors_metadata(path)

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, hidden_size: int | None = None, seq_len: int | None = None
    ) -> EmbeddingBank:
        """Read a bank file, checking D and L (when given) as `NegativeEmbedding.load` does."""
        path = Path(path)
        if not path.is_file():
            raise BankError(f"bank file not found: {path}")
        if path.suffix != ".safetensors":
            raise BankError(f"expected a .safetensors bank file, got {path}")
        tensors, metadata = read_embedding_safetensors(path)
        rows = NegativeEmbedding.from_file(path, tensors, metadata, hidden_size=hidden_size, seq_len=seq_len)
        metadata = dict(rows.metadata)
        if rows.kind != "bank":
            raise BankError(f"{path} is a global embedding, not a bank")
        if PROMPTS_KEY not in metadata:
            raise BankError(
                f"{path} has {len(rows.embeds)} rows but no '{PROMPTS_KEY}' metadata to map prompts to rows"
            )
        try:
            prompts = json.loads(metadata.pop(PROMPTS_KEY))
        except json.JSONDecodeError as err:
            raise BankError(f"{path}: the '{PROMPTS_KEY}' metadata is not a JSON list ({err})") from None
        if not isinstance(prompts, list):
            raise BankError(f"{path}: the '{PROMPTS_KEY}' metadata is not a JSON list")
        fallback = _read_fallback(path)
        try:
            return cls(
                NegativeEmbedding(rows.embeds, rows.pooled, rows.attention_mask, metadata), prompts, fallback
            )
        except EmbeddingError as err:
            raise BankError(f"{path}: {err}") from None

    # -- use ------------------------------------------------------------------------------------------------
    def select(self, prompts: list[str], fallback: str = "global") -> NegativeEmbedding:
        """The rows for `prompts`, in order, as a bank of `len(prompts)` rows.

        A prompt the bank does not hold gets the global fallback row (`fallback="global"`, an error when the
        bank has none) or fails (`fallback="error"`).
        """
        if fallback not in FALLBACK_CHOICES:
            raise BankError(f"unknown bank fallback '{fallback}'; known: {', '.join(FALLBACK_CHOICES)}")
        if isinstance(prompts, str) or not prompts:
            raise BankError("expected a non-empty list of prompts")
        unknown = self.unknown(prompts)
        if unknown and (fallback == "error" or self.fallback is None):
            why = "bank fallback is 'error'" if fallback == "error" else "the bank has no global fallback"
            raise BankError(
                f"{len(unknown)} prompt(s) are not in the bank of {len(self)} prompts, "
                f"e.g. {_quote(unknown[0])} ({why})"
            )
        index = torch.tensor([self._index.get(p, len(self)) for p in prompts])  # len(self): the fallback

        def gather(name: str) -> torch.Tensor | None:
            own = getattr(self.rows, name)
            if own is None:
                return None
            if unknown:
                own = torch.cat([own, getattr(self.fallback, name).to(own.dtype)])
            return own[index]

        return NegativeEmbedding(
            gather("embeds"),
            gather("pooled"),
            gather("attention_mask"),
            metadata={**self.rows.metadata, "kind": "bank"},
        )

    def for_prompts(self, pipe: Any, prompts: list[str], fallback: str = "global") -> dict[str, torch.Tensor]:
        """Keyword arguments for `pipe(prompts, **kwargs)`: each prompt's own row (see `select`), checked
        against the pipeline's text encoder and cast to its device and dtype like `for_pipeline`."""
        return self.select(prompts, fallback).for_pipeline(pipe, len(prompts))


def _read_fallback(path: Path) -> NegativeEmbedding | None:
    """The `fallback_*` tensors of a bank file as a global embedding, or None when it has none."""
    with safe_open(path, framework="pt") as reader:
        names = {FALLBACK_PREFIX + key: key for key in TENSOR_KEYS}
        tensors = {names[key]: reader.get_tensor(key) for key in reader.keys() if key in names}
    if not tensors:
        return None
    if EMBEDS_KEY not in tensors:
        raise BankError(f"{path}: has fallback companions but no {FALLBACK_PREFIX}{EMBEDS_KEY}")
    try:
        return NegativeEmbedding(tensors[EMBEDS_KEY], tensors.get(POOLED_KEY), tensors.get(MASK_KEY))
    except EmbeddingError as err:
        raise BankError(f"{path}: fallback: {err}") from None


def _quote(prompt: str, limit: int = 60) -> str:
    return repr(prompt if len(prompt) <= limit else prompt[: limit - 1] + "…")
