"""renegx: learned negative embeddings for text-to-image diffusion (ReNeg training, export, inference).

`renegx.NegativeEmbedding` and `renegx.EmbeddingBank` are the public way to read a file renegx wrote (model
cards and integrations name them), `renegx.RenegxError` the base of every error they raise, and
`renegx.token_embedding_fingerprint` / `renegx.check_encoder_fingerprint` the check of a file's text encoder
weights (integrations hold encoders of their own); they are imported on first use so that `import renegx`
stays cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "NegativeEmbedding": "renegx.negatives.embedding",
    "EmbeddingBank": "renegx.negatives.bank",
    "RenegxError": "renegx.errors",
    "token_embedding_fingerprint": "renegx.negatives.fingerprint",
    "check_encoder_fingerprint": "renegx.negatives.fingerprint",
}

__all__ = [
    "EmbeddingBank",
    "NegativeEmbedding",
    "RenegxError",
    "__version__",
    "check_encoder_fingerprint",
    "token_embedding_fingerprint",
]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'renegx' has no attribute {name!r}")
