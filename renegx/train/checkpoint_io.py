"""Checkpoints written like every other renegx file (temp + fsync + rename), read with one-line errors.

Lightning's own `TorchCheckpointIO` serialises to memory and writes through an fsspec transaction (a rename
on local disks) but never fsyncs, leaves an anonymous temporary file behind when killed, and a missing or
corrupt checkpoint surfaces as a stack trace. `AtomicCheckpointIO` writes through `renegx.files.atomic_path`
(a kill or a full disk leaves the previous `last.ckpt` intact) and turns a bad file into a `CheckpointError`.
`RenegxCLI` installs it; with a hand-built Trainer pass `Trainer(plugins=[AtomicCheckpointIO()])`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from renegx.errors import RenegxError
from renegx.files import OutputError, atomic_path
from renegx.train.step import TrainingConfigError


class CheckpointError(RenegxError):
    """A checkpoint that is missing, unreadable or not a renegx training checkpoint."""


def check_held_negative(held: dict, name: str, shape: torch.Size, where: str, space: str, model: str) -> None:
    """A checkpoint's `state_dict` `held` must hold this run's trainable `name` (of model.space `space`) with
    `shape`; else one line naming what it holds instead: the other space's parameter, none, or another
    model's shape."""
    embeds = held.get(name)
    if embeds is None:
        other = next((key for key in ("negative_embeds", "negative_tokens") if key in held), None)
        if other is not None:
            raise TrainingConfigError(
                f"{where} holds {other}, but this run learns {name} (model.space {space})"
            )
        raise TrainingConfigError(f"{where} holds no {name}: not a renegx training checkpoint")
    if embeds.shape != shape:
        what = "token vectors" if name == "negative_tokens" else "a negative embedding"
        raise TrainingConfigError(
            f"{where} holds {what} of shape {tuple(embeds.shape)}, but model '{model}' needs {tuple(shape)}"
        )


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as temporary:
                torch.save(checkpoint, temporary)
        except OSError as err:
            raise OutputError(f"cannot write checkpoint {path}: {err.strerror or err}") from err

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        try:
            checkpoint = torch.load(
                path,
                map_location=map_location or "cpu",
                weights_only=True if weights_only is None else weights_only,
            )
        except Exception as err:  # torch.load fails in many ways on a foreign or truncated file
            raise CheckpointError(
                f"cannot read checkpoint {path}: not a complete PyTorch checkpoint "
                "(truncated, or another kind of file)"
            ) from err
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise CheckpointError(f"checkpoint {path} is not a Lightning training checkpoint (no state_dict)")
        return checkpoint
