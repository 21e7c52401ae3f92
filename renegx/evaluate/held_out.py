"""After training: null vs a handcrafted negative prompt vs the learned embedding on held-out prompts.

`HeldOutSummary` is a Lightning callback (the embedded default uses it). Same prompts, same seeds for the
three negatives; every judge scores every picture; differences carry paired-bootstrap 95% intervals that
resample prompts. It prints the table and writes `summary.json` and a grid PNG (rows: negatives, same seeds)
next to the run.
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from renegx.evaluate.judges import resolve_judge
from renegx.evaluate.protocol import format_estimate, mean_delta, noise_seed
from renegx.files import atomic_write_json
from renegx.train.sampling import sample_each

SUMMARY_FILE = "summary.json"
GRID_FILE = "heldout_grid.png"
HELD_OUT_SEEDS = (100_000, 100_001)


def held_out_pairs(prompts: list[str], seeds) -> list[tuple[str, int, int]]:
    """(prompt, prompt index, noise seed) of every picture, prompt-major."""
    return [(p, i, noise_seed(s, i)) for i, p in enumerate(prompts) for s in seeds]


def grid_columns(prompts: list[str], seeds) -> list[tuple[str, int]]:
    """(prompt, seed) of every picture in `held_out_pairs` order: the grid's column labels name the seeds
    `summary.json` lists, not the noise each one makes for its prompt."""
    return [(prompt, seed) for prompt in prompts for seed in seeds]


def draw_and_judge(
    pl_module, negatives: dict[str, torch.Tensor], prompts: list[str], seeds, judges, batch_size: int = 32
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, np.ndarray]], np.ndarray]:
    """Every negative on `prompts` × `seeds` with the same noise (`noise_seed`), scored by every judge; the
    steps before the module's `negative_from`, the same for every negative, are drawn once.

    Returns pictures (negative → `(N, 3, H, W)`), scores (judge → negative → `(N,)`) and each picture's
    prompt index (the clusters of a paired bootstrap).
    """
    pairs = held_out_pairs(prompts, seeds)
    pictures = {name: [] for name in negatives}
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        texts, seeds_of = [p for p, _, _ in chunk], [s for _, _, s in chunk]
        drawn = sample_each(
            pl_module.backbone, pl_module.schedule, pl_module.recipe, texts, negatives, seeds_of
        )
        for name, images in drawn.items():
            pictures[name].append(images.float().cpu())
    pictures = {name: torch.cat(parts) for name, parts in pictures.items()}
    texts = [p for p, _, _ in pairs]
    scores = {}
    for judge_name in judges:
        judge = resolve_judge(judge_name)
        reward = judge.build()
        scores[judge_name] = {
            name: judge_scores(reward, images, texts, judge.scale) for name, images in pictures.items()
        }
    return pictures, scores, np.array([i for _, i, _ in pairs])


@torch.no_grad()
def judge_scores(
    reward, images: torch.Tensor, texts: list[str], scale: float = 1.0, chunk: int = 64
) -> np.ndarray:
    """`(N,)` scores of `images` `(N, 3, H, W)` for `texts` by `reward`, `chunk` pictures at a time, times
    `scale` (the judge's report scale)."""
    return (
        np.concatenate(
            [
                reward(images[k : k + chunk], texts[k : k + chunk]).cpu().numpy()
                for k in range(0, len(texts), chunk)
            ]
        )
        * scale
    )


def difference_rows(
    scores: dict[str, np.ndarray], prompt_ids: np.ndarray, others: tuple[str, ...] = ("null", "handcrafted")
) -> dict:
    """Per judge: each negative's mean and `learned_minus_<other>`, the paired estimate
    (`Estimate.to_json()`), from `(N,)` score arrays."""
    out = {name: float(values.mean()) for name, values in scores.items()}
    for other in others:
        estimate = mean_delta(scores["learned"], scores[other], clusters=prompt_ids)
        out[f"learned_minus_{other}"] = estimate.to_json()
    return out


def format_table(judges: dict[str, dict]) -> str:
    header = (
        f"{'judge':<18}{'null':>10}{'handcrafted':>13}{'learned':>10}"
        "   learned−null [95% CI]          learned−handcrafted [95% CI]"
    )
    lines = [header]
    for name, row in judges.items():
        lines.append(
            f"{name:<18}{row['null']:>10.4f}{row['handcrafted']:>13.4f}{row['learned']:>10.4f}"
            f"   {format_estimate(row['learned_minus_null']):<30}"
            f"   {format_estimate(row['learned_minus_handcrafted'])}"
        )
    return "\n".join(lines)


def save_grid(
    pictures: dict[str, torch.Tensor],
    pairs: list[tuple[str, int]],
    path: Path,
    notes: dict[str, str],
    columns: int = 16,
) -> None:
    """One labelled row per negative (its name and `notes[name]`), one column per (prompt, seed) of the first
    `columns` pairs, the same noise down each column; PNG."""
    from renegx.evaluate.grids import prompt_seed_label, save_labelled_grid

    shown = pairs[:columns]
    save_labelled_grid(
        [images[: len(shown)] for images in pictures.values()],
        ["\n".join([name, notes[name]]) if name in notes else name for name in pictures],
        [prompt_seed_label(prompt, seed) for prompt, seed in shown],
        path,
    )


def held_out_metrics(
    summary: dict, prefix: str = "held_out", measures: tuple[str, ...] = ("defective", "adherence")
) -> dict[str, float]:
    """The summary's learned-minus-null estimates as flat `<prefix>/*` metrics with their 95% bounds: every
    judge's and the ground truth's `measures`."""
    differences = {judge: row["learned_minus_null"] for judge, row in summary["judges"].items()}
    for measure in measures:
        if "ground_truth" in summary:
            differences[measure] = summary["ground_truth"]["learned"][f"{measure}_minus_null"]
    metrics = {}
    for name, estimate in differences.items():
        metrics.update(
            {
                f"{prefix}/{name}_minus_null": estimate["value"],
                f"{prefix}/{name}_minus_null_low": estimate["low"],
                f"{prefix}/{name}_minus_null_high": estimate["high"],
            }
        )
    return metrics


def truth_reader(pl_module):
    """`read(images, prompts) -> readings` of the toy world's ground truth when the module's model is a
    toy-world generator; None for any other model."""
    from renegx.models import family_of
    from renegx.toyworld import TOY_MODELS

    if family_of(pl_module.hparams.model).name not in TOY_MODELS:
        return None
    from renegx.toyworld.truth import load_reader

    return load_reader()


class HeldOutSummary(L.Callback):
    """Scores null, `handcrafted` and the learned embedding on `prompts` × `seeds` by every judge at fit end.

    prompts: "toyworld" (the toy world's held-out prompts) or a list of strings.
    judges: judge names (`renegx.evaluate.judges`), e.g. ["toy-pref", "toy-independent"].
    handcrafted: the negative prompt the learned embedding is compared with (default: the toy world's).
    """

    def __init__(
        self,
        prompts: str | list[str] = "toyworld",
        judges: list[str] | None = None,
        handcrafted: str | None = None,
        seeds: list[int] | None = None,
        batch_size: int = 32,
    ):
        self.prompts = prompts
        self.judges = judges or ["toy-pref", "toy-independent"]
        if handcrafted is None:
            from renegx.toyworld.scene import HANDCRAFTED_NEGATIVE

            handcrafted = HANDCRAFTED_NEGATIVE
        self.handcrafted = handcrafted
        self.seeds = seeds or list(HELD_OUT_SEEDS)
        self.batch_size = batch_size
        self.started = time.time()
        self.folder = Path(".")

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.started = time.time()
        # On every rank: `trainer.log_dir` is a collective under DDP.
        self.folder = Path(trainer.log_dir or trainer.default_root_dir)

    def _prompt_list(self) -> list[str]:
        if self.prompts == "toyworld":
            from renegx.toyworld import heldout_prompts

            return heldout_prompts()
        return list(self.prompts)

    @torch.no_grad()
    def summarise(self, pl_module, folder: Path, embedding: str = "") -> dict:
        prompts = self._prompt_list()
        negatives = {
            "null": pl_module.null_embeds,
            "handcrafted": pl_module.backbone.encode_prompts([self.handcrafted]),
            "learned": pl_module.learned_negative().detach(),
        }
        pictures, scores, prompt_ids = draw_and_judge(
            pl_module, negatives, prompts, self.seeds, self.judges, self.batch_size
        )
        table = {judge: difference_rows(by_negative, prompt_ids) for judge, by_negative in scores.items()}
        folder.mkdir(parents=True, exist_ok=True)
        pairs = grid_columns(prompts, self.seeds)
        truth = self._ground_truth(pl_module, pictures, [p for p, _ in pairs], prompt_ids)
        notes = {
            name: f"defective {row['defective']:.2f}\nadherence {row['adherence']:.2f}"
            for name, row in truth.get("ground_truth", {}).items()
        }
        save_grid(pictures, pairs, folder / GRID_FILE, notes)
        summary = {
            "judges": table,
            **truth,
            "seconds": round(time.time() - self.started, 1),
            "embedding": embedding,
            "prompts": len(prompts),
            "seeds": self.seeds,
            "noise": "each picture's noise is seed * 1000 + its prompt's index (one noise per prompt)",
            "handcrafted": self.handcrafted,
            "negative_from": pl_module.recipe.negative_from,
            "grid": str(folder / GRID_FILE),
        }
        atomic_write_json(folder / SUMMARY_FILE, summary)
        return summary

    @staticmethod
    def _ground_truth(pl_module, pictures: dict[str, torch.Tensor], texts: list[str], prompt_ids) -> dict:
        """The toy world's meters and classifier on the same pictures (nothing for other models)."""
        read = truth_reader(pl_module)
        if read is None:
            return {}
        from renegx.toyworld.truth import meter_floor, truth_table

        readings = {name: read(images, texts) for name, images in pictures.items()}
        return {"ground_truth": truth_table(readings, prompt_ids), "meter_floor": meter_floor()}

    def on_fit_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        folder = self.folder
        exported = folder / "negative.safetensors"
        summary = self.summarise(pl_module, folder, str(exported) if exported.exists() else "")
        if trainer.logger is not None:
            trainer.logger.log_metrics(held_out_metrics(summary), step=trainer.global_step)
            trainer.logger.save()
        late = ""
        if summary["negative_from"]:
            steps = len(pl_module.schedule)
            start = pl_module.recipe.negative_start(steps)
            late = f", each acting from step {start} of {steps} (the null before: model.negative_from)"
        print(
            f"\nheld-out: {summary['prompts']} prompts × {len(self.seeds)} seeds, "
            f"the same noise for every negative{late}"
        )
        print(format_table(summary["judges"]))
        if "ground_truth" in summary:
            from renegx.toyworld.truth import format_truth_table

            print(format_truth_table(summary["ground_truth"], summary["meter_floor"]))
        print(f"summary: {folder / SUMMARY_FILE}   grid (null / handcrafted / learned): {summary['grid']}")
        print(f"seconds: {summary['seconds']}")
