"""The old path of the exporter callback, which saved run configs name (`renegx.export.EmbeddingExporter`)."""

from renegx.train.callbacks import EmbeddingExporter

__all__ = ["EmbeddingExporter"]
