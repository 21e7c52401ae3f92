"""renegx: learned negative embeddings for text-to-image diffusion (ReNeg training, export, inference).

`renegx.NegativeEmbedding` and `renegx.EmbeddingBank` are the public way to read a file renegx wrote (model
cards and integrations name them), and `renegx.RenegxError` the base of every error they raise; they are
imported on first use so that `import renegx` stays cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "NegativeEmbedding": "renegx.negatives.embedding",
    "EmbeddingBank": "renegx.negatives.bank",
    "RenegxError": "renegx.errors",
}

__all__ = ["EmbeddingBank", "NegativeEmbedding", "RenegxError", "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'renegx' has no attribute {name!r}")
