"""Which model family a name denotes, and its frozen backbone: SD1.x/2.x (`renegx.backbone`) or SDXL
(`renegx.sdxl`). A name is `tiny`, `tiny-sdxl`, a local diffusers folder or a hub id; the family of a folder
or an id is the pipeline class in its `model_index.json`."""

from __future__ import annotations

import json
from pathlib import Path

from renegx.backbone import Backbone, _offline, load_backbone

TINY_PIPELINES = {"tiny-sdxl": "StableDiffusionXLPipeline"}


def pipeline_class(model: str) -> str:
    """The `_class_name` in a diffusers folder's (or hub id's) `model_index.json`; "" when there is none."""
    if model in TINY_PIPELINES:
        return TINY_PIPELINES[model]
    folder = Path(model).expanduser()
    if folder.is_dir():
        index = folder / "model_index.json"
        return json.loads(index.read_text()).get("_class_name", "") if index.is_file() else ""
    if "/" not in model:  # `tiny` and other built-in names: not a hub id
        return ""
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.load_config(model, local_files_only=_offline()).get("_class_name", "")
    except (OSError, ValueError):
        return ""


def is_sdxl(model: str) -> bool:
    return "StableDiffusionXL" in pipeline_class(model)


def load_family_backbone(
    model: str = "tiny", clip_skip: int | None = None, prediction_type: str | None = None
) -> Backbone:
    """The frozen backbone of `model`'s family: an `SDXLBackbone` for SDXL, else SD1.x/2.x's `Backbone`."""
    if is_sdxl(model):
        from renegx.sdxl import load_sdxl_backbone

        return load_sdxl_backbone(model, clip_skip=clip_skip, prediction_type=prediction_type)
    return load_backbone(model, clip_skip=clip_skip, prediction_type=prediction_type)
