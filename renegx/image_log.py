"""The old path of the image-logging callback, named by saved run configs (`renegx.image_log.ImageLogger`)."""

from renegx.train.callbacks import ImageLogger

__all__ = ["ImageLogger"]
