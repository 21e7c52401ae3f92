"""`renegx per-prompt` (and `train.py per-prompt`): tune one negative per prompt from a global embedding into
a bank (`renegx.train.per_prompt`)."""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

from renegx.cli.infer import naming_the_base_model
from renegx.cli.terminal import (
    RERUN,
    add_device,
    add_seeds,
    flag_value,
    job_parser,
    names_a_config,
    parse_job_args,
    parse_seeds,
    run_reporting_errors,
    set_threads,
    with_config_files,
)
from renegx.configs import DEFAULT_TRAIN, TRAIN_BASE, path_of, train_config_for
from renegx.models.backbone import Backbone
from renegx.models.loading import resolve_device
from renegx.negatives.embedding import NegativeEmbedding
from renegx.negatives.format import NEGATIVE_FROM_KEY
from renegx.negatives.spec import recorded_metadata
from renegx.prompts import read_prompts
from renegx.rewards import REWARDS
from renegx.train.module import ReNegModule
from renegx.train.per_prompt.bank_run import report_path, tune_bank
from renegx.train.per_prompt.tuner import PerPromptError, PerPromptSettings, PerPromptTuner


# -- the command line: train.py per-prompt -------------------------------------------------------------------
def per_prompt_parser(prog: str = "train.py per-prompt", defaults: tuple[Path, ...] = (TRAIN_BASE,)):
    """The options, and the `model:` section of a training config (`--config`; `--model.*` overrides it);
    the config's `data:`, `trainer:` and the like are read and left unused. `defaults`: the config files read
    first (without a `--config`, the shipped default's too)."""
    parser = job_parser(
        prog,
        "Tune one negative embedding per prompt, starting from a global one; write a bank.",
        default_config_files=[str(path) for path in defaults],
    )
    parser.add_class_arguments(ReNegModule, "model", fail_untyped=False, sub_configs=True)
    for section in ("data", "trainer"):  # the training run's; unused here
        parser.add_argument(f"--{section}", type=dict | None, help="(a training config's, unused)")
    parser.add_argument("--seed_everything", type=int | bool | None, help="(a training config's, unused)")
    add = parser.add_argument
    add("--embedding", required=True, help="the global embedding every prompt starts from")
    add("--prompts", required=True, help="prompt file (.txt, .json, .jsonl, .tsv) or builtin")
    add("--out", required=True, help="the bank to write, e.g. bank.safetensors")
    add("--max-steps", type=int, default=10, help="most gradient steps per prompt (N)")
    add("--patience", type=int, default=3, help="steps without a new best, then stop (P)")
    add_seeds(parser, "--eval-seeds", "0,1,2,3", "each step is scored on them")
    add("--batch-prompts", type=int, default=8, help="prompts tuned at once")
    add("--train-samples", type=int, default=1, help="noise samples per prompt per step")
    add(
        "--grad-chunk",
        type=int | None,
        help="prompts per grad step and decode, bounds memory (default: the batch)",
    )
    add("--lr", type=float | None, help="default: the config's model.lr")
    add("--seed", type=int, default=0, help="seed of the training noise and stop steps")
    add("--shard", help="i/n: every n-th prompt from the i-th (default: RANK/WORLD_SIZE)")
    add("--no-fallback", action="store_true", help="do not store the global row as fallback")
    add_device(parser, dtype=False)
    return parser


def parse_per_prompt_args(argv: list[str] | None = None, prog: str = "train.py per-prompt"):
    """The options; without a `--config`, the shipped default config under the recipe the `--embedding`
    file records (`as_trained`) under the flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if names_a_config(argv):
        return parse_job_args(per_prompt_parser(prog), argv)
    defaults = (TRAIN_BASE, path_of(DEFAULT_TRAIN))
    recipe = as_trained(flag_value(argv, "--embedding"))
    return parse_job_args(per_prompt_parser(prog, defaults), [*recipe, *argv])


def as_trained(embedding: str | None) -> list[str]:
    """The options that tune as the file `embedding` was trained: the shipped config of its model and reward
    (else its model and reward class over the default config) and the recipe it records (guidance scale,
    steps, stop steps, where the negative starts acting); [] for a file that records none of it."""
    recorded = recorded_metadata(embedding) if embedding else {}
    base, reward = recorded.get("base_model"), REWARDS.get(recorded.get("reward", ""))
    if base is None or reward is None:
        return []
    config = train_config_for(base, reward.__name__)
    flags = ["--config", str(path_of(config))] if config else ["--model.model", base]
    if config is None:
        flags += ["--model.reward", f"renegx.rewards.{reward.__name__}"]
    flags += ["--model.negative_from", recorded.get(NEGATIVE_FROM_KEY, "0")]
    for key in ("guidance_scale", "num_inference_steps", "stop_steps", "model_config"):
        if key in recorded:
            flags += [f"--model.{key}", recorded[key]]
    print(
        f"renegx: no --config: tuning as {embedding} was trained ({config or DEFAULT_TRAIN} with model "
        f"'{base}', reward '{reward.name}', its guidance scale and steps)",
        file=sys.stderr,
    )
    return flags


def build_model(args) -> object:
    """The ReNegModule of the parsed `model:` section (frozen backbone and reward); nothing is trained."""
    parser = per_prompt_parser()
    return parser.instantiate_classes(args).model


def _shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise PerPromptError(f"--shard must be i/n (e.g. 0/2), got '{text}'")
    return int(parts[0]), int(parts[1])


def load_global_embedding(path: str | os.PathLike, backbone: Backbone) -> NegativeEmbedding:
    """The global embedding, checked against the backbone (hidden size, length; base model: a warning)."""
    embedding = NegativeEmbedding.load(
        path, hidden_size=backbone.hidden_size, seq_len=backbone.sequence_length
    )
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


def tune_bank_from_args(args, build: Callable[[object], object] = build_model) -> Path | None:
    """Run `train.py per-prompt`; `build(args)` returns the ReNegModule of the parsed `model:` section."""
    set_threads(args.threads)
    if not Path(args.embedding).is_file():
        raise PerPromptError(f"--embedding file not found: {args.embedding}")
    prompts = read_prompts(args.prompts)
    shard = _shard(args.shard)
    eval_seeds = tuple(parse_seeds(args.eval_seeds, "--eval-seeds", PerPromptError))
    module = build(args)
    hparams: Mapping = module.hparams
    if hparams.get("space", "output") != "output":
        raise PerPromptError(
            f"per-prompt tuning tunes rows of the output space, not model.space {hparams['space']}: start it "
            "from the token-space run's negative.safetensors with model.space output"
        )
    settings = PerPromptSettings(
        max_steps=args.max_steps,
        patience=args.patience,
        eval_seeds=eval_seeds,
        batch_prompts=args.batch_prompts,
        train_samples=args.train_samples,
        grad_chunk=args.grad_chunk,
        lr=hparams["lr"] if args.lr is None else args.lr,
        betas=tuple(hparams["betas"]),
        weight_decay=hparams["weight_decay"],
        seed=args.seed,
    )
    backbone, reward = (
        module.backbone.to(resolve_device(args.device)),
        module.reward.to(resolve_device(args.device)),
    )
    global_embedding = load_global_embedding(args.embedding, backbone)
    if global_embedding.negative_from != module.recipe.negative_from:
        raise PerPromptError(
            f"{args.embedding} acts from {global_embedding.negative_from:g} of the schedule (its "
            f"negative_from) but the config's model.negative_from is {module.recipe.negative_from:g}; tune "
            "with the recipe it was trained with"
        )
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


def main(argv: list[str], prog: str = "train.py per-prompt") -> int:
    """`renegx per-prompt --config C --embedding G.safetensors --prompts P --out bank.safetensors`."""

    def job() -> None:
        args = parse_per_prompt_args(with_config_files(argv, "train"), prog)
        fix = f"pass a --config whose model.model is '{{base}}' ({DEFAULT_TRAIN} for 'toy')"
        with naming_the_base_model(args.embedding, lambda: args.model.model, fix):
            tune_bank_from_args(args)

    return run_reporting_errors(job, on_interrupt=RERUN)
