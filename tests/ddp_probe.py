"""Helpers imported by training subprocesses (tests/ on PYTHONPATH): a per-rank probe and a flaky reward.

`RankProbe` writes, per rank, what that rank saw and ended with to `$RENEGX_PROBE_DIR/rank<r>.json` and
`rank<r>.safetensors`. `FlakyClipScore` is the tiny CLIP score, NaN for the training calls listed in
`nan_calls` on rank `nan_rank` (its first training call is number 0).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import lightning as L
import torch
from safetensors.torch import save_file

from renegx.rewards import ClipScore


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


class RankProbe(L.Callback):
    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.first_rng: str | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_rng is None:
            self.first_rng = digest(pl_module.rollout_source.noise_generator(trainer.global_rank).get_state())
        self.batches.append(batch["indices"].tolist())

    def on_train_end(self, trainer, pl_module) -> None:
        folder = Path(os.environ["RENEGX_PROBE_DIR"])
        rank = trainer.global_rank
        ddp = trainer.strategy.model
        record = {
            "rank": rank,
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "batches": self.batches,
            "first_rng": self.first_rng,
            "skipped_steps": pl_module.guard.skipped,
            "ddp_ignored": sorted(getattr(ddp, "parameters_to_ignore", [])),
            "ddp_synced": [name for name, _ in ddp.named_parameters() if name.endswith("negative_embeds")],
        }
        (folder / f"rank{rank}.json").write_text(json.dumps(record))
        save_file(
            {"negative_embeds": pl_module.negative_embeds.detach().cpu()}, folder / f"rank{rank}.safetensors"
        )


class FlakyClipScore(ClipScore):
    def __init__(self, model: str = "tiny", nan_rank: int = 1, nan_calls: list[int] | None = None) -> None:
        super().__init__(model=model)
        self.nan_rank = nan_rank
        self.nan_calls = set(nan_calls or [])
        self.training_calls = 0

    def score(self, images, prompts):
        scores = super().score(images, prompts)
        if not torch.is_grad_enabled():
            return scores
        call, self.training_calls = self.training_calls, self.training_calls + 1
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if rank == self.nan_rank and call in self.nan_calls:
            return scores * float("nan")
        return scores
