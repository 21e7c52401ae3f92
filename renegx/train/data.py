"""The Lightning DataModule that feeds prompts to training (prompt sources: `renegx.prompts`).

ReNeg trains on prompts only: a batch is a list of strings plus their indices (the index lets a module keep
per-prompt state, e.g. fixed evaluation noise).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import lightning
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from renegx.errors import RenegxError
from renegx.prompts import read_prompts


class DataConfigError(RenegxError):
    """A bad data setting (batch size, validation size); the message is one line."""


def split_prompts(prompts: Sequence[str], val_size: int | float, seed: int) -> tuple[list[str], list[str]]:
    """Split prompts into (train, val) by a seeded shuffle; each part keeps the original order.

    Args:
        prompts: the prompts to split (positions are split, so a repeated prompt may land on both sides).
        val_size: a count (int >= 0) or a fraction in [0, 1). A positive value gives at least one val prompt.
        seed: seed of `random.Random`; the same (prompts, val_size, seed) always gives the same split.
    """
    n = len(prompts)
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
        raise DataConfigError(f"val_size must be an int count or a float fraction, got {val_size!r}")
    if isinstance(val_size, float):
        if not 0.0 <= val_size < 1.0:
            raise DataConfigError(f"val_size as a fraction must be in [0, 1), got {val_size}")
        count = max(1, round(val_size * n)) if val_size > 0 else 0
    else:
        if val_size < 0:
            raise DataConfigError(f"val_size must be >= 0, got {val_size}")
        count = val_size
    if count >= n:
        raise DataConfigError(
            f"val_size {val_size} leaves no training prompts ({count} of {n} for validation)"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    val_indices = sorted(order[:count])
    train_indices = sorted(order[count:])
    return [prompts[i] for i in train_indices], [prompts[i] for i in val_indices]


class PromptDataset(Dataset):
    """A list of prompts; item i is `{"prompt": prompts[i], "index": i}`."""

    def __init__(self, prompts: Sequence[str]) -> None:
        self.prompts = list(prompts)

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"prompt": self.prompts[index], "index": index}


class ResumableShuffleSampler(DistributedSampler):
    """The training order: epoch e is a permutation drawn from `seed + e`, dealt to ranks like
    `DistributedSampler`, so the order is a pure function of (seed, epoch, rank, world size).

    Each pass over the sampler is the next epoch, counted here: `set_epoch` is ignored, because Lightning's
    epoch counter can come back one short after repeated resumes at epoch ends. `resume(epoch, skip)` makes
    the next pass epoch `epoch` without the first `skip` indices of this rank's share (the length stays the
    whole share: Lightning counts the batches already seen).
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.resume(0, 0)

    def resume(self, epoch: int, skip: int) -> None:
        self.next_epoch, self.skip = epoch, skip

    def set_epoch(self, epoch: int) -> None:
        """Ignored (see the class docstring)."""

    def __iter__(self):
        self.epoch, self.next_epoch = self.next_epoch, self.next_epoch + 1
        indices = list(super().__iter__())[self.skip :]
        self.skip = 0
        return iter(indices)


def collate_prompts(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch dataset items: `{"prompts": list[str] (B), "indices": LongTensor (B,)}`."""
    return {
        "prompts": [item["prompt"] for item in items],
        "indices": torch.tensor([item["index"] for item in items], dtype=torch.long),
    }


class PromptDataModule(lightning.LightningDataModule):
    """Training and validation prompts for ReNeg.

    Args:
        prompts: training prompts, a builtin name or a file (see `read_prompts`).
        field: JSON key / TSV column of the prompt, for both `prompts` and `val_prompts`; None picks it.
        dedupe: drop repeated prompts (in both sources).
        val_prompts: a separate validation source; None splits `val_size` prompts off `prompts`.
        val_size: count or fraction split off for validation when `val_prompts` is None.
        batch_size: training micro-batch per device.
        val_batch_size: validation batch; None uses `batch_size`.
        seed: seed of the split and of the training order (the same seed gives the same batches).
        num_workers: DataLoader workers (prompts are tiny: 0 is usually right).

    Each rank trains on its own share of every epoch's permutation (see `ResumableShuffleSampler`), and a
    checkpoint records how far into the epoch training got, so `--ckpt_path` resumes at the next batch.
    """

    def __init__(
        self,
        prompts: str = "imagereward-refl",
        field: str | None = None,
        dedupe: bool = False,
        val_prompts: str | None = None,
        val_size: int | float = 8,
        batch_size: int = 4,
        val_batch_size: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1 or (val_batch_size is not None and val_batch_size < 1):
            raise DataConfigError(
                f"batch_size and val_batch_size must be >= 1, got {batch_size} and {val_batch_size}"
            )
        self.save_hyperparameters()
        self.train_dataset: PromptDataset | None = None
        self.val_dataset: PromptDataset | None = None
        self._resume_position: dict[str, int] | None = None
        self._train_sampler: ResumableShuffleSampler | None = None

    def setup(self, stage: str | None = None) -> None:
        """Read the prompts and build the datasets (once; later calls do nothing)."""
        if self.train_dataset is not None:
            return
        hp = self.hparams
        train = read_prompts(hp.prompts, field=hp.field, dedupe=hp.dedupe)
        if hp.val_prompts is not None:
            val = read_prompts(hp.val_prompts, field=hp.field, dedupe=hp.dedupe)
        else:
            train, val = split_prompts(train, hp.val_size, hp.seed)
        self.train_dataset = PromptDataset(train)
        self.val_dataset = PromptDataset(val)

    def train_dataloader(self) -> DataLoader:
        """This rank's share of a `seed`-and-epoch permutation, resuming where a loaded checkpoint stopped."""
        world_size, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        sampler = ResumableShuffleSampler(
            self._dataset("train"), num_replicas=world_size, rank=rank, seed=self.hparams.seed
        )
        if self._resume_position is not None:
            sampler.resume(*self._resume_at(self._resume_position, sampler, world_size))
        self._train_sampler = sampler
        return DataLoader(
            self._dataset("train"),
            batch_size=self.hparams.batch_size,
            sampler=sampler,
            drop_last=False,
            collate_fn=collate_prompts,
            num_workers=self.hparams.num_workers,
            persistent_workers=False,
        )

    # -- the data position, saved in every checkpoint -----------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        """The epoch being trained and how many of its micro-batches this rank consumed; {} outside fit."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != TrainerFn.FITTING or self._train_sampler is None:
            return {}
        return {
            "epoch": self._train_sampler.epoch,
            "batches": trainer.fit_loop.epoch_loop.batch_progress.current.ready,
            "batch_size": self.hparams.batch_size,
            "world_size": trainer.world_size,
        }

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume_position = dict(state_dict) if state_dict else None

    def _resume_at(self, position: dict[str, int], sampler: ResumableShuffleSampler, world_size: int):
        """(epoch, how much of this rank's share to skip); exact when batch size and ranks are unchanged."""
        epoch, samples = position["epoch"], position["batches"] * position["batch_size"]
        if (position["batch_size"], position["world_size"]) != (self.hparams.batch_size, world_size):
            samples = samples * position["world_size"] // world_size
            rank_zero_warn(
                f"resuming with batch size {self.hparams.batch_size} on {world_size} ranks instead of "
                f"{position['batch_size']} on {position['world_size']}: the data position is approximate"
            )
        if samples >= sampler.num_samples:
            return epoch + 1, 0
        return epoch, samples

    def val_dataloader(self) -> DataLoader:
        """Validation prompts in a fixed order."""
        return DataLoader(
            self._dataset("val"),
            batch_size=self.hparams.val_batch_size or self.hparams.batch_size,
            shuffle=False,
            drop_last=False,
            collate_fn=collate_prompts,
            num_workers=self.hparams.num_workers,
            persistent_workers=False,
        )

    def _dataset(self, split: str) -> PromptDataset:
        dataset = self.train_dataset if split == "train" else self.val_dataset
        if dataset is None:
            raise RuntimeError(f"PromptDataModule: call setup() before {split}_dataloader()")
        return dataset
