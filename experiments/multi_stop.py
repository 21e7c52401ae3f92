"""Shared-rollout multi-stop against single-stop training on the toy world, at the same compute.

    python -m experiments.multi_stop                          # k = 4 against k = 1, training seeds 0 and 1
    python -m experiments.multi_stop --stops 2 --seeds 0 --steps 100

For each training seed, the default config (`train/default`) trains twice: with one gradient
stop per rollout for `--steps` optimiser steps, then with `--stops` stops per rollout until it has used the
same CPU time (`time.process_time` of the training loop, so other load on the machine counts less than in
wall time). Validation is off in both; the held-out evaluation is the default's: the 64 held-out prompts × 2
seeds, the same noise for every negative, both toy judges and the ground truth (defective share, adherence:
lower and higher are better). Each row gives the held-out gain over null; the last table is multi-stop minus
single-stop, paired per picture, with a bootstrap 95% CI that resamples prompts. The last line is
`multi_stop_minus_single: <toy-pref gain, all seeds pooled>`.
"""

from __future__ import annotations

import argparse
import platform
import time

import lightning as L
import numpy as np
import torch

from renegx.cli.fit import _ParseOnlyCLI
from renegx.configs import path_of
from renegx.evaluate.held_out import HELD_OUT_SEEDS, draw_and_judge
from renegx.evaluate.protocol import mean_delta
from renegx.toyworld import heldout_prompts
from renegx.toyworld.truth import load_reader

CONFIG = path_of("train/default")
JUDGES = ("toy-pref", "toy-independent")
GROUND_TRUTH = ("defective", "adherence")  # renegx.toyworld.truth, read on the same pictures


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stops", type=int, default=4, help="stops per rollout of the multi-stop run")
    parser.add_argument("--seeds", default="0,1", help="training seeds, comma-separated")
    parser.add_argument("--steps", type=int, default=250, help="optimiser steps of the single-stop run")
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args(argv)


class CpuBudget(L.Callback):
    """Measures the training loop's CPU seconds; with a budget, stops once they are spent."""

    def __init__(self, budget: float | None = None):
        self.budget, self.began, self.spent = budget, 0.0, 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.began = time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.spent = time.process_time() - self.began
        if self.budget is not None and self.spent >= self.budget:
            trainer.should_stop = True


def train(seed: int, stops: int, max_steps: int, budget: float | None) -> tuple[torch.Tensor, dict, object]:
    """The default config trained with `stops` per rollout: the embedding, its costs and the module."""
    args = ["--config", str(CONFIG), "--seed_everything", str(seed), "--model.stops_per_rollout", str(stops)]
    cli = _ParseOnlyCLI(args=args, run=False)
    L.seed_everything(seed, verbose=False)
    built = cli.parser.instantiate(cli.config)
    meter = CpuBudget(budget)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[meter],
    )
    began = time.perf_counter()
    trainer.fit(built.model, datamodule=built.data)
    costs = {
        "steps": trainer.global_step,
        "gradient_samples": trainer.global_step * stops * cli.config.data.batch_size,
        "cpu_s": meter.spent,
        "wall_s": time.perf_counter() - began,
    }
    return built.model.negative_embeds.detach().clone(), costs, built.model


def _interval(a: np.ndarray, b: np.ndarray, clusters: np.ndarray) -> str:
    estimate = mean_delta(a, b, clusters=clusters)
    return f"{estimate.value:+.4f} [{estimate.low:+.4f}, {estimate.high:+.4f}]"


def main(argv: list[str] | None = None, report=print) -> float:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    single, multi = "single", f"multi{args.stops}"
    report(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}; {CONFIG.name}, k = 1 for {args.steps} steps vs k = {args.stops}"
    )
    pooled = {judge: {"single": [], "multi": [], "clusters": []} for judge in (*JUDGES, *GROUND_TRUTH)}
    read = load_reader()
    texts = [p for p in heldout_prompts() for _ in HELD_OUT_SEEDS]
    for seed in seeds:
        single_embeds, single_costs, module = train(seed, 1, args.steps, None)
        multi_embeds, multi_costs, _ = train(seed, args.stops, 100 * args.steps, single_costs["cpu_s"])
        for label, costs in ((single, single_costs), (multi, multi_costs)):
            report(
                f"seed {seed} {label:<7} steps {costs['steps']:4d}  gradient samples "
                f"{costs['gradient_samples']:5d}  CPU {costs['cpu_s']:7.1f} s  wall {costs['wall_s']:7.1f} s"
            )
        negatives = {"null": module.null_embeds, single: single_embeds, multi: multi_embeds}
        pictures, scores, clusters = draw_and_judge(
            module, negatives, heldout_prompts(), HELD_OUT_SEEDS, JUDGES
        )
        readings = {name: read(images, texts) for name, images in pictures.items()}
        scores.update({m: {name: r[m] for name, r in readings.items()} for m in GROUND_TRUTH})
        for judge, by_name in scores.items():
            gains = [
                f"{a}−{b} {_interval(by_name[a], by_name[b], clusters)}"
                for a, b in ((single, "null"), (multi, "null"), (multi, single))
            ]
            report(f"seed {seed} {judge:<16} " + "  ".join(gains))
            pooled[judge]["single"].append(by_name[single])
            pooled[judge]["multi"].append(by_name[multi])
            pooled[judge]["clusters"].append(clusters)
    result = 0.0
    for judge, parts in pooled.items():
        a, b = np.concatenate(parts["multi"]), np.concatenate(parts["single"])
        clusters = np.concatenate(parts["clusters"])
        report(f"pooled seeds {seeds} {judge:<16} {multi}−{single} {_interval(a, b, clusters)}")
        if judge == JUDGES[0]:
            result = float((a - b).mean())
    report(f"multi_stop_minus_single: {result:+.4f}")
    return result


if __name__ == "__main__":
    main()
