"""The command line of per-prompt tuning: `train.py per-prompt`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from renegx.data import read_prompts
from renegx.embedding import NegativeEmbedding
from renegx.models.backbone import Backbone
from renegx.per_prompt.bank_run import report_path, tune_bank
from renegx.per_prompt.tuner import PerPromptError, PerPromptSettings, PerPromptTuner
from renegx.terminal import OneLineArgumentParser


# -- the command line: train.py per-prompt -------------------------------------------------------------------
def parse_per_prompt_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineArgumentParser(
        prog="train.py per-prompt",
        description="Tune one negative embedding per prompt, starting from a global one; write a bank.",
    )
    parser.add_argument("--config", required=True, help="the training config (its model: section is used)")
    parser.add_argument("--embedding", required=True, help="the global embedding every prompt starts from")
    parser.add_argument("--prompts", required=True, help="prompt file (.txt, .json, .jsonl, .tsv) or builtin")
    parser.add_argument("--out", required=True, help="the bank to write, e.g. bank.safetensors")
    parser.add_argument("--max-steps", type=int, default=10, help="most gradient steps per prompt (N)")
    parser.add_argument("--patience", type=int, default=3, help="steps without a new best, then stop (P)")
    parser.add_argument("--eval-seeds", default="0,1,2,3", help="comma-separated seeds to score each step on")
    parser.add_argument("--batch-prompts", type=int, default=8, help="prompts tuned at once")
    parser.add_argument("--train-samples", type=int, default=1, help="noise samples per prompt per step")
    parser.add_argument(
        "--grad-chunk", type=int, help="prompts per grad step and decode, bounds memory (default: the batch)"
    )
    parser.add_argument("--lr", type=float, help="default: the config's model.lr")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training noise and stop steps")
    parser.add_argument("--shard", help="i/n: every n-th prompt from the i-th (default: RANK/WORLD_SIZE)")
    parser.add_argument("--no-fallback", action="store_true", help="do not store the global row as fallback")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    return parser.parse_args(argv)


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise PerPromptError(f"{flag} must be comma-separated integers, got '{text}'") from None
    if not values:
        raise PerPromptError(f"{flag} is empty")
    return values


def _shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise PerPromptError(f"--shard must be i/n (e.g. 0/2), got '{text}'")
    return int(parts[0]), int(parts[1])


def _device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def load_global_embedding(path: str | os.PathLike, backbone: Backbone) -> NegativeEmbedding:
    """The global embedding, checked against the backbone (hidden size, length; base model: a warning)."""
    embedding = NegativeEmbedding.load(path, hidden_size=backbone.hidden_size, seq_len=backbone.max_length)
    if embedding.kind != "global":
        rows = embedding.embeds.shape[0]
        raise PerPromptError(f"{path} is a bank of {rows} rows; expected a global embedding")
    base = embedding.metadata.get("base_model")
    if base is not None and base != backbone.name:
        warnings.warn(
            f"{path} was trained on base model '{base}', tuning on '{backbone.name}' (same hidden size)",
            UserWarning,
            stacklevel=2,
        )
    return embedding


def tune_bank_from_args(args: argparse.Namespace, build_model: Callable[[str], object]) -> Path | None:
    """Run `train.py per-prompt`; `build_model(config)` returns the config's ReNegModule."""
    for flag, value in (("--config", args.config), ("--embedding", args.embedding)):
        if not Path(value).is_file():
            raise PerPromptError(f"{flag} file not found: {value}")
    prompts = read_prompts(args.prompts)
    shard = _shard(args.shard)
    module = build_model(args.config)
    hparams: Mapping = module.hparams
    settings = PerPromptSettings(
        max_steps=args.max_steps,
        patience=args.patience,
        eval_seeds=_int_list(args.eval_seeds, "--eval-seeds"),
        batch_prompts=args.batch_prompts,
        train_samples=args.train_samples,
        grad_chunk=args.grad_chunk,
        lr=hparams["lr"] if args.lr is None else args.lr,
        betas=tuple(hparams["betas"]),
        weight_decay=hparams["weight_decay"],
        seed=args.seed,
    )
    backbone, reward = module.backbone.to(_device(args.device)), module.reward.to(_device(args.device))
    global_embedding = load_global_embedding(args.embedding, backbone)
    tuner = PerPromptTuner(
        backbone,
        reward,
        num_inference_steps=hparams["num_inference_steps"],
        recipe=module.recipe,
        settings=settings,
    )
    written = tune_bank(
        tuner, prompts, global_embedding, args.out, shard=shard, with_fallback=not args.no_fallback
    )
    if written is not None:
        summary = json.loads(report_path(written).read_text())["summary"]
        print(
            f"renegx: wrote {written} ({summary['prompts']} prompts, {summary['improved']} improved on the "
            f"evaluation seeds, mean gain {summary['mean_gain']:+.4g}) and {report_path(written).name}",
            file=sys.stdout,
        )
    return written
