"""Former home of the SDXL backbone, kept for callers not yet moved: use `renegx.models.sdxl` and
`renegx.models.load_backbone`."""

from renegx.models.registry import load_backbone as load_sdxl_backbone
from renegx.models.sdxl import SDXLBackbone, pack_conditioning, sdxl_time_ids, unpack_conditioning

__all__ = ["SDXLBackbone", "load_sdxl_backbone", "pack_conditioning", "sdxl_time_ids", "unpack_conditioning"]
