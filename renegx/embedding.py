"""The old path of `renegx.negatives.embedding`, which published model cards import from."""

from renegx.negatives.embedding import LateNegative, NegativeEmbedding

__all__ = ["LateNegative", "NegativeEmbedding"]
