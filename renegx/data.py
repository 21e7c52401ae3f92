"""Prompt sources and the Lightning DataModule that feeds prompts to training.

ReNeg trains on prompts only: a batch is a list of strings plus their indices (the index lets a module keep
per-prompt state, e.g. fixed evaluation noise). Prompts come from a shipped public set, named by
`BUILTIN_PROMPTS`, or from a file:

- `.txt`   one prompt per line;
- `.json`  a list of strings, or a list of objects holding the prompt in `field`;
- `.jsonl` one string or object per line, same `field` rule;
- `.tsv`   a header row and tab-separated columns, the prompt in column `field` (PartiPrompts.tsv).

Whitespace is stripped and empty prompts are dropped. Every problem with a file is a one-line
`PromptFileError` that names the file.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from renegx.errors import RenegxError
from renegx.terminal import did_you_mean

PROMPT_DIR = Path(__file__).parent / "prompts"

# name -> (file in renegx/prompts/, field holding the prompt)
BUILTIN_PROMPTS: dict[str, tuple[str, str]] = {
    "imagereward-refl": ("imagereward_refl_prompts.json", "text"),
    "imagereward-benchmark": ("imagereward_benchmark_prompts.json", "prompt"),
    "parti": ("PartiPrompts.tsv", "Prompt"),
    # the toy world's prompt sets (plain captions; the held-out ones never reached its generator), read from
    # the toy world's weights folder
    "toyworld-train": ("prompts_train.json", "prompt"),
    "toyworld-heldout": ("prompts_heldout.json", "prompt"),
}

SUPPORTED_SUFFIXES = (".txt", ".json", ".jsonl", ".tsv")

# Fields tried in order when no field is given (JSON/JSONL records, TSV columns).
JSON_FIELDS = ("prompt", "text", "caption")
TSV_FIELDS = ("Prompt", "prompt", "text", "caption")


class PromptFileError(RenegxError):
    """A prompt source that cannot be read; the message is one line naming the file and the problem."""


class DataConfigError(RenegxError):
    """A bad data setting (batch size, validation size); the message is one line."""


def resolve_prompt_source(source: str | Path) -> Path:
    """Map a builtin name (see `BUILTIN_PROMPTS`) or a path of an existing file to a file path."""
    if str(source).startswith("toyworld-") and str(source) in BUILTIN_PROMPTS:
        from renegx.toyworld import weights_folder

        return weights_folder() / BUILTIN_PROMPTS[str(source)][0]
    if str(source) in BUILTIN_PROMPTS:
        return PROMPT_DIR / BUILTIN_PROMPTS[str(source)][0]
    path = Path(source).expanduser()
    if not path.is_file():
        problem = "is a directory" if path.is_dir() else "does not exist"
        raise PromptFileError(
            f"prompt file {source} {problem}; "
            f"give a prompt file or a builtin name: {', '.join(BUILTIN_PROMPTS)}"
            + did_you_mean(str(source), BUILTIN_PROMPTS)
        )
    return path


def read_prompts(source: str | Path, field: str | None = None, dedupe: bool = False) -> list[str]:
    """Read the prompts of a builtin set or a file, in file order.

    Args:
        source: a builtin name (`"imagereward-refl"`, `"imagereward-benchmark"`, `"parti"`) or a file path.
        field: the JSON/JSONL key or TSV column holding the prompt. None: a builtin set's own field; for a
            file, the first present of "prompt", "text", "caption" (TSV: "Prompt" first).
        dedupe: drop exact repeats (after stripping), keeping the first occurrence.

    Returns:
        The non-empty, stripped prompts.
    """
    path = resolve_prompt_source(source)
    if field is None and str(source) in BUILTIN_PROMPTS:
        field = BUILTIN_PROMPTS[str(source)][1]
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise PromptFileError(
            f"prompt file {path} has unsupported extension {suffix or '(none)'!r}; "
            f"supported: {', '.join(SUPPORTED_SUFFIXES)}"
        )
    # utf-8-sig: a byte-order mark (common from Windows editors) would otherwise corrupt the first prompt.
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise PromptFileError(f"prompt file {path} is not UTF-8 text: {err}") from None

    if not text.strip():
        raise PromptFileError(f"prompt file {path} has no prompts")
    if suffix == ".txt":
        raw = text.splitlines()
    elif suffix == ".json":
        raw = _json_prompts(path, text, field)
    elif suffix == ".jsonl":
        raw = _jsonl_prompts(path, text, field)
    else:
        raw = _tsv_prompts(path, text, field)

    prompts = [p.strip() for p in raw if p.strip()]
    if dedupe:
        prompts = list(dict.fromkeys(prompts))
    if not prompts:
        raise PromptFileError(f"prompt file {path} has no prompts")
    return prompts


def _record_prompt(path: Path, record: Any, field: str | None, where: str) -> str:
    """The prompt of one JSON record: the string itself, or the value of `field` in an object."""
    if isinstance(record, str):
        return record
    if not isinstance(record, dict):
        raise PromptFileError(
            f"prompt file {path}: {where} is a {type(record).__name__}, expected a string or an object"
        )
    candidates = (field,) if field is not None else JSON_FIELDS
    for key in candidates:
        if key in record:
            value = record[key]
            if not isinstance(value, str):
                raise PromptFileError(
                    f"prompt file {path}: {where} field {key!r} is a {type(value).__name__}, "
                    "expected a string"
                )
            return value
    wanted = f"field {field!r}" if field is not None else f"any of the fields {', '.join(JSON_FIELDS)}"
    raise PromptFileError(
        f"prompt file {path}: {where} has no {wanted} (it has: {', '.join(map(str, record)) or 'no fields'})"
    )


def _json_prompts(path: Path, text: str, field: str | None) -> list[str]:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise PromptFileError(f"prompt file {path} is not valid JSON: {err}") from None
    if not isinstance(records, list):
        raise PromptFileError(
            f"prompt file {path}: expected a JSON list of strings or objects, got a {type(records).__name__}"
        )
    return [_record_prompt(path, record, field, f"record {i}") for i, record in enumerate(records)]


def _jsonl_prompts(path: Path, text: str, field: str | None) -> list[str]:
    prompts = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise PromptFileError(f"prompt file {path}: line {lineno} is not valid JSON: {err}") from None
        prompts.append(_record_prompt(path, record, field, f"line {lineno}"))
    return prompts


def _tsv_prompts(path: Path, text: str, field: str | None) -> list[str]:
    # QUOTE_NONE: TSV has no quoting, and a Parti prompt may start with a quote ('"G I G G L E" painted ...').
    reader = csv.DictReader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE)
    columns = reader.fieldnames or []
    candidates = (field,) if field is not None else TSV_FIELDS
    column = next((c for c in candidates if c in columns), None)
    if column is None:
        wanted = f"column {field!r}" if field is not None else f"any of the columns {', '.join(TSV_FIELDS)}"
        raise PromptFileError(
            f"prompt file {path}: header has no {wanted} (it has: {', '.join(columns) or 'no columns'})"
        )
    prompts = []
    for i, row in enumerate(reader):
        if row[column] is None:
            has = ", ".join(k for k, v in row.items() if k is not None and v is not None)
            raise PromptFileError(
                f"prompt file {path}: record {i} (line {reader.line_num}) has no column {column!r} "
                f"(it has: {has})"
            )
        prompts.append(row[column])
    return prompts


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
