"""The one way renegx loads a pretrained model: a local folder or a hub id, `HF_HUB_OFFLINE` honoured, and a
one-line error naming the model when it cannot be loaded.

A name that looks like a path (`/`, `./`, `../`, `~`, more than one `/`) or names an existing file is local
and must be a folder; any other name is a hub id (`owner/name`), read from the cache only when
`HF_HUB_OFFLINE` is set. The rewards (`renegx.rewards.loading`) and the samplers' external models load
through it too, each with its own error type.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from renegx.errors import RenegxError, first_line

OFFLINE_HINT = " (offline: download it first or pass a local folder)"


class ModelError(RenegxError):
    """A model that cannot be found, loaded or used as asked; the message is one line."""


def offline() -> bool:
    """Whether `HF_HUB_OFFLINE` asks for cached files only."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def looks_local(model: str) -> bool:
    """A local path rather than a hub id (`owner/name` has exactly one '/')."""
    explicit = model.startswith(("/", "./", "../", "~", ".\\"))
    return explicit or model.count("/") > 1 or (os.sep != "/" and os.sep in model)


def source_of(model: str, error: type[RenegxError] = ModelError, what: str = "model") -> tuple[str, bool]:
    """`(folder or hub id, local_files_only)` of `model`; a local path that is not a folder is an error."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        return str(folder), True
    if looks_local(model) or folder.exists():
        raise error(f"{what} folder not found: {model}")
    return model, offline()


def from_pretrained(
    cls, model: str, what: str = "model", error: type[RenegxError] = ModelError, source=None, **kwargs
):
    """`cls.from_pretrained` of `model` (or of its already resolved `source`), failing in one line."""
    path, local = source or source_of(model, error, what)
    try:
        return cls.from_pretrained(path, local_files_only=local, **kwargs)
    except (OSError, ValueError) as err:
        raise error(
            f"cannot load {what} '{model}'{OFFLINE_HINT if local else ''}: {first_line(err)}"
        ) from err


def pipeline_class(model: str) -> str:
    """The `_class_name` in the `model_index.json` of a diffusers folder or hub id; "" when there is none."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        index = folder / "model_index.json"
        return json.loads(index.read_text()).get("_class_name", "") if index.is_file() else ""
    if model.count("/") != 1:  # neither a folder nor an `owner/name` hub id
        return ""
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.load_config(model, local_files_only=offline()).get("_class_name", "")
    except (OSError, ValueError):
        return ""


def resolve_device(name: str):
    """`--device`: "auto" is this process's GPU (`LOCAL_RANK` under a launcher) if any, else the CPU."""
    import torch

    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")
