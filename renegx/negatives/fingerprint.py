"""A fingerprint of the text encoder weights a negative was trained against, and the check of a file's
fingerprint against a loaded model's (docs/design.md §3, "Text encoder fingerprint").

What is hashed: for each text encoder in the pipeline's order (SDXL: CLIP-L, CLIP-G; SD3: CLIP-L, CLIP-G,
T5), its token embedding's shape and the sign bit of every element (`get_input_embeddings().weight`,
vocabulary × width, row-major), packed eight to a byte, through one SHA-256 for all of a model's encoders. The
fingerprint is the scheme and the hash's first 16 hex digits: `s1:0123456789abcdef`.

Why signs: casting to another floating dtype (float16, bfloat16, float8) rounds a number to its nearest
neighbour, which never has the other sign (an underflow gives a signed zero), so the same weights in any
dtype, on any device, give the same fingerprint; hashing rounded values instead would differ in fp16 and bf16
pipelines (double rounding, fp16's subnormals). Why the token embedding: every implementation of the encoder
exposes it the same way (transformers, single-file checkpoints, ComfyUI), it is the largest tensor, and a
fine-tune or merge of the encoder flips the signs of many of its small elements. What it cannot see: a change
that leaves every sign of the token embedding as it was (an attention-only LoRA merged into the encoder, a
small nudge of one weight).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from renegx.errors import RenegxError, RenegxWarning

FINGERPRINT_KEY = "text_encoder_fingerprint"  # metadata: the fingerprint of the encoders a negative fits
SCHEME = "s1"
_CHUNK = 1 << 22  # elements cast and packed at a time (a multiple of 8: chunks pack to whole bytes)


class EncoderMismatch(RenegxWarning):
    """A negative loaded against text encoder weights other than those it was trained against."""


def token_embedding_fingerprint(weights: Sequence[torch.Tensor]) -> str:
    """`s1:<16 hex>` of the token embeddings `weights` (each `(vocab, width)`, any floating dtype and
    device), in encoder order; see the module docstring for what is hashed."""
    digest = hashlib.sha256()
    for weight in weights:
        digest.update(repr(tuple(weight.shape)).encode())
        flat = weight.detach().reshape(-1)
        for start in range(0, flat.numel(), _CHUNK):
            signs = torch.signbit(flat[start : start + _CHUNK].float())
            digest.update(np.packbits(signs.cpu().numpy()).tobytes())
    return f"{SCHEME}:{digest.hexdigest()[:16]}"


def text_encoder_fingerprint(encoders: Sequence[Any]) -> str | None:
    """The fingerprint of transformers text encoders, in pipeline order; None when their weights are not
    in memory (offloaded to the meta device)."""
    weights = [encoder.get_input_embeddings().weight for encoder in encoders]
    if not weights or any(weight.is_meta for weight in weights):
        return None
    return token_embedding_fingerprint(weights)


def check_encoder_fingerprint(
    metadata: dict[str, str],
    actual: str | None,
    target: str,
    source: str,
    strict: bool = False,
    error: type[RenegxError] = RenegxError,
    switch: str = "--strict-encoder",
) -> str | None:
    """Compare the fingerprint a negative's `metadata` records with the model's (`actual`).

    A file without one (older files, textual inversions, official `.bin`s), a model whose weights cannot be
    read (`actual` None) or a fingerprint of another scheme is not compared. On a mismatch: `strict` raises
    `error`, otherwise an `EncoderMismatch` warning; either names `source` (the file), both fingerprints, the
    base model the file records and `target` (what it is loaded against, e.g. `'tiny'`, quoted by the caller;
    `switch`: what turns `strict` on). Returns the warning's message, or None when nothing
    differs.
    """
    recorded = metadata.get(FINGERPRINT_KEY)
    if not recorded or actual is None or recorded.partition(":")[0] != actual.partition(":")[0]:
        return None
    if recorded == actual:
        return None
    base = metadata.get("base_model")
    trained = f"text encoder {recorded}" + (f" of '{base}'" if base else "")
    message = f"{source} was trained against {trained}, but {target} has text encoder {actual}"
    if strict:
        raise error(f"{message}; {switch} refuses another text encoder")
    message += f"; it may guide poorly ({switch} refuses it)"
    warnings.warn(message, EncoderMismatch, stacklevel=2)
    return message
