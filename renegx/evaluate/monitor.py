"""During training: the judges and the ground truth on a fixed training-split sample, learned vs null.

`TrainingMonitor` is a Lightning callback. At the first step and every `every_n_steps` optimizer steps (and
at the end of training) rank 0 draws `num_prompts` training prompts × `seeds`, each (prompt, seed) from its
own fixed noise (`noise_seed`, as the held-out table), once with the model's null and once with the current
learned negative, the same noise for both. Every judge scores both; for a toy-world model the ground truth
reads both (defective share and each defect kind, adherence). Each learned − null is paired with a
bootstrap 95% interval that resamples prompts (`renegx.evaluate.protocol`, `renegx.toyworld.truth`).

The readings go to every logger as `monitor/<measure>_minus_null` with `_low` and `_high`, to
`<log_dir>/monitor.json` (every reading so far) and to `<log_dir>/monitor.png` (each estimate with its
interval against the step), both written atomically after every reading.

What a reading costs: the null's pictures and scores do not change, so they are drawn and scored once (and
while the learned negative still equals the null, its pictures are the null's); each later reading draws
only the learned negative's steps from `negative_from` on, from latents kept from the first reading. The
readings never enter the loss, and drawing uses generators of its own: a run with the monitor trains the
bitwise-same negative as one without (tests/test_monitor.py). Under DDP only rank 0 draws; the other ranks
wait for it in the next step's all-reduce.
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from renegx.errors import RenegxError
from renegx.evaluate.held_out import (
    difference_rows,
    held_out_metrics,
    held_out_pairs,
    judge_scores,
    truth_reader,
)
from renegx.evaluate.judges import resolve_judge
from renegx.evaluate.plots import estimates_over_steps
from renegx.files import atomic_write_bytes, atomic_write_json, ensure_writable_dir
from renegx.toyworld.truth import DEFECT_KINDS, truth_table
from renegx.train.sampling import finish_each, shared_start

MONITOR_FILE = "monitor.json"
PLOT_FILE = "monitor.png"
PREFIX = "monitor"
MONITOR_SEEDS = (200_000, 200_001)
# The ground truth's estimates a reading logs and plots: the defective share, each defect kind, adherence.
TRUTH_MEASURES = ("defective", *DEFECT_KINDS, "adherence")


def spread_sample(prompts: list[str], count: int) -> list[str]:
    """`count` prompts spread evenly over `prompts` (all of them when there are no more than `count`)."""
    if len(prompts) <= count:
        return list(prompts)
    return [prompts[i * len(prompts) // count] for i in range(count)]


class TrainingMonitor(L.Callback):
    """Learned − null on a fixed training-split sample by every judge and the ground truth, every N steps.

    Args:
        every_n_steps: optimizer steps between readings (0: only at the start and the end of training).
        num_prompts: how many training prompts, spread evenly over the training split.
        seeds: noise seeds; prompt i draws from `noise_seed(seed, i)` for each seed.
        judges: judge names (`renegx.evaluate.judges`); default the toy world's two.
        batch_size: pictures drawn per UNet batch.
        dirpath: folder of `monitor.json` and `monitor.png`; default the run's log directory.
    """

    def __init__(
        self,
        every_n_steps: int = 125,
        num_prompts: int = 64,
        seeds: list[int] | None = None,
        judges: list[str] | None = None,
        batch_size: int = 64,
        dirpath: str | None = None,
    ):
        seeds = list(MONITOR_SEEDS if seeds is None else seeds)
        if every_n_steps < 0 or num_prompts < 1 or not seeds or batch_size < 1:
            raise RenegxError(
                "TrainingMonitor needs every_n_steps >= 0, num_prompts >= 1, batch_size >= 1 and at least "
                f"one seed, got {every_n_steps}, {num_prompts}, {batch_size} and {len(seeds)} seeds"
            )
        self.every_n_steps = every_n_steps
        self.num_prompts = num_prompts
        self.seeds = seeds
        self.judge_names = list(judges or ["toy-pref", "toy-independent"])
        self.batch_size = batch_size
        self.dirpath = dirpath
        self.folder: Path | None = None
        self.readings: list[dict] = []
        self._sample: dict | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # On every rank: `trainer.log_dir` is a collective (a broadcast from rank 0) under DDP.
        self.folder = Path(self.dirpath or trainer.log_dir or trainer.default_root_dir)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.read(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0:
            self.read(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.read(trainer, pl_module)

    # -- the fixed sample: prompts, noise, the null's pictures and scores -----------------------------------
    def _prepare(self, trainer: L.Trainer, pl_module) -> dict:
        dataset = getattr(trainer.datamodule, "train_dataset", None)
        prompts = spread_sample(list(dataset.prompts) if dataset is not None else [], self.num_prompts)
        if not prompts:
            raise RenegxError("TrainingMonitor found no training prompts to read on")
        pairs = held_out_pairs(prompts, self.seeds)
        texts, noises = [p for p, _, _ in pairs], [s for _, _, s in pairs]
        judges = [resolve_judge(name) for name in self.judge_names]
        drawer = (pl_module.backbone, pl_module.schedule, pl_module.recipe)
        sample = {
            "prompts": prompts,
            "texts": texts,
            "prompt_ids": np.array([i for _, i, _ in pairs]),
            "judges": {judge.name: (judge.build(), judge.scale) for judge in judges},
            "read": truth_reader(pl_module),
            "latents": torch.cat(
                [
                    shared_start(*drawer, texts[k : k + self.batch_size], noises[k : k + self.batch_size])
                    for k in range(0, len(texts), self.batch_size)
                ]
            ),
        }
        sample["null_embeds"] = pl_module.null_embeds.detach().clone()
        sample["null"] = self._judge(sample, self._draw(pl_module, sample, sample["null_embeds"]))
        return sample

    def _draw(self, pl_module, sample: dict, negative: torch.Tensor) -> torch.Tensor:
        """`negative`'s pictures `(N, 3, H, W)` of the sample, from the kept latents."""
        texts, latents, size = sample["texts"], sample["latents"], self.batch_size
        drawer = (pl_module.backbone, pl_module.schedule, pl_module.recipe)
        return torch.cat(
            [
                finish_each(*drawer, texts[k : k + size], {"": negative}, latents[k : k + size])[""]
                .float()
                .cpu()
                for k in range(0, len(texts), size)
            ]
        )

    @staticmethod
    def _judge(sample: dict, pictures: torch.Tensor) -> dict:
        """Every judge's `(N,)` scores and, for a toy-world model, the ground truth's readings."""
        scores = {
            name: judge_scores(reward, pictures, sample["texts"], scale)
            for name, (reward, scale) in sample["judges"].items()
        }
        read = sample["read"]
        return {"scores": scores, "truth": read(pictures, sample["texts"]) if read is not None else None}

    # -- one reading --------------------------------------------------------------------------------------
    @torch.no_grad()
    def read(self, trainer: L.Trainer, pl_module) -> dict | None:
        """Draw, judge, log and write one reading at the current step (rank 0 only, once per step)."""
        step = trainer.global_step
        if not trainer.is_global_zero or any(r["step"] == step for r in self.readings):
            return None
        started, cpu = time.perf_counter(), time.process_time()
        if self._sample is None:
            self._sample = self._prepare(trainer, pl_module)
        sample = self._sample
        learned = pl_module.learned_negative().detach()
        if torch.equal(learned, sample["null_embeds"]):
            judged = sample["null"]  # the same negative draws the same pictures
        else:
            judged = self._judge(sample, self._draw(pl_module, sample, learned))
        reading = {"step": step, **self._compare(sample["null"], judged, sample["prompt_ids"])}
        reading["seconds"] = round(time.perf_counter() - started, 2)
        reading["cpu_seconds"] = round(time.process_time() - cpu, 2)
        self.readings.append(reading)
        metrics = held_out_metrics(reading, PREFIX, TRUTH_MEASURES)
        metrics[f"{PREFIX}/seconds"] = reading["seconds"]
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            logger.save()
        self._write(sample)
        return reading

    @staticmethod
    def _compare(null: dict, learned: dict, prompt_ids: np.ndarray) -> dict:
        """Learned − null per judge (`difference_rows`) and in the ground truth (`truth_table`), paired."""
        judges = {
            name: difference_rows({"null": scores, "learned": learned["scores"][name]}, prompt_ids, ("null",))
            for name, scores in null["scores"].items()
        }
        if null["truth"] is None:
            return {"judges": judges}
        table = truth_table({"null": null["truth"], "learned": learned["truth"]}, prompt_ids)
        return {"judges": judges, "ground_truth": table}

    def _write(self, sample: dict) -> None:
        folder = ensure_writable_dir(self.folder)
        atomic_write_json(
            folder / MONITOR_FILE,
            {
                "prompts": sample["prompts"],
                "seeds": self.seeds,
                "pictures_per_negative": len(sample["texts"]),
                "readings": self.readings,
            },
        )
        atomic_write_bytes(folder / PLOT_FILE, estimates_over_steps(self.series(), self.title(sample)))

    def title(self, sample: dict) -> str:
        return (
            f"learned − null on {len(sample['prompts'])} training prompts × {len(self.seeds)} noises "
            "(paired, 95% CI)"
        )

    def series(self) -> dict[str, list[tuple[int, dict]]]:
        """Each estimate's `(step, estimate)` over the readings so far."""
        out: dict[str, list[tuple[int, dict]]] = {}
        for reading in self.readings:
            for name, row in reading["judges"].items():
                out.setdefault(name, []).append((reading["step"], row["learned_minus_null"]))
            learned = reading.get("ground_truth", {}).get("learned", {})
            for measure in TRUTH_MEASURES:
                if f"{measure}_minus_null" in learned:
                    out.setdefault(measure, []).append((reading["step"], learned[f"{measure}_minus_null"]))
        return out
