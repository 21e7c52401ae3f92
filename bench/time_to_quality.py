"""Time to quality: the CPU-seconds each gradient estimator needs to reach the paper's final quality, decided
with intervals on two fresh evaluation sets.

    python -m bench.time_to_quality                          # ≤ 45 minutes on 2 cores (2 workers × 1 thread)
    python -m bench.time_to_quality --split train            # where estimators are chosen
    python -m bench.time_to_quality --quick                  # a smoke run: tiny budget, one seed

Every estimator trains a toy-world embedding as the default config does (toy model, `toy-pref`, the training
captions, DDIM 20, w = 7.5, K = 7; `paper` at lr 0.01 with the negative at every step, the paper's recipe)
through the module's public step (`ReNegModule.training_loss`: the rollout source's x_t, `loss_at_stops`) and
the optimizer and LR schedule the module builds (`ReNegModule.optimizer_and_schedule`: AdamW, cosine to 0 at
the run's last step). The budget is the CPU-seconds the paper-faithful step needs for `--budget-steps` steps,
measured on this machine before the runs. A point at a fraction f of the budget (`--eval-at`) is a run of its
own given f × budget: its step count from the estimator's measured cost per step, its schedule decaying to its
own end — never the middle of a longer run.

Every point's embedding is drawn on two evaluation sets with the same noise for every embedding (each prompt
its own): set A the `--split` prompts × `--eval-seeds` noises, set B the `--second-split` prompts ×
`--second-seeds` noises (disjoint prompts and noises); each picture is read by both toy judges and the ground
truth (`renegx.toyworld.truth`: defective share, adherence).

The decision. An estimator reaches quality at f when, on both sets, against the paper's final point (f = 1):
toy-pref and toy-independent: the lower bound of (its gain − the paper's final gain) ≥ −margin; defective
share: the upper bound of the difference ≤ +margin; adherence: the lower bound ≥ −margin (`--margin-*`,
printed). Intervals are 95% percentile bootstraps that resample evaluation prompts (paired: the same prompts
and noises for both) and training seeds (paired by seed: the same seed draws the same training prompts and
noise). The paper's own time to quality is its smallest f that passes the same test against its final point.
The last line: `time_to_quality_speedup: X` = the paper's CPU-seconds at its own smallest passing f ÷ the
fewest CPU-seconds of another estimator's smallest passing f (mean over training seeds), or `none` when no
fraction of any estimator passes on both sets.

Estimators (`ESTIMATORS`): `paper` (full-resolution no-grad rollout to a stop uniform in the last K),
`coarse-S` (the rollout takes one UNet call per S DDIM steps, `model.rollout_stride`), `reuse-R` (a rollout's
x_t serve R optimizer steps, `model.reuse_rollouts`),
`last-step` (K = 1: the grad step always at the last step), `batch-8` (8 prompts, twice the learning rate,
about half the steps), `coarse-4-lr-2x` (coarse-4 at twice the learning rate), `late-lr-4x` (the toy
default's recipe: the negative acts on the second half of the schedule, `model.negative_from: 0.5`, at four
times the rate; its evaluation draws it the same way). The default run trains
`DEFAULT_RUN`; the bias is measured for all of them. Each one's bias is the cosine of its expected gradient
with the paper's on fixed noise (the expectation over the stop draw taken exactly: every stop of the last
K), at the embedding of seed 0's paper run given half the budget; `reuse-R` rolls out with the embedding
R/2 steps older.
FLOPs per sample at SD1.5 shapes (512², UNet counted on the meta device) are printed beside each estimator.
The paper step's CPU split (rollout / grad step / decode + reward, `step_phases`) is printed with the
ceiling it puts on a latent reward, which would skip only the decode and the pixel judge.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

import numpy as np
import torch
import torch.nn.functional as F

BASE = {"batch": 4, "lr": 0.01, "stop_steps": 7, "rollout_stride": 1, "reuse": 1, "negative_from": 0.0}
ESTIMATORS = {
    "paper": {},
    "coarse-4": {"rollout_stride": 4},
    "coarse-8": {"rollout_stride": 8},
    "reuse-4": {"reuse": 4},
    "batch-8": {"batch": 8, "lr": 0.02},
    "coarse-4-lr-2x": {"rollout_stride": 4, "lr": 0.02},
    "last-step": {"stop_steps": 1},
    "late-lr-4x": {"negative_from": 0.5, "lr": 0.04},
}
DEFAULT_RUN = ("paper", "coarse-4", "batch-8", "late-lr-4x")
MEASURES = ("toy-pref", "toy-independent", "defective", "adherence")
JUDGES = ("toy-pref", "toy-independent")
# Non-inferiority margins against the paper's final point, in each measure's own units: about a quarter of
# the paper's final gain on each judge (+0.02 to +0.03 toy-pref, +0.4 toy-independent, docs/benchmarks.md),
# and 3 points of share on the ground truth.
MARGINS = {"toy-pref": 0.005, "toy-independent": 0.1, "defective": 0.03, "adherence": 0.03}
LOWER_IS_BETTER = ("defective",)
SETS = ("A", "B")
RESAMPLES = 2000


def settings(name: str) -> dict:
    return {**BASE, **ESTIMATORS[name]}


def build_module(spec: dict):
    """The toy default's module with one estimator's settings."""
    from renegx.rewards import ToyPreference
    from renegx.train.module import ReNegModule

    return ReNegModule(
        model="toy",
        reward=ToyPreference(),
        num_inference_steps=20,
        stop_steps=spec["stop_steps"],
        lr=spec["lr"],
        rollout_stride=spec["rollout_stride"],
        reuse_rollouts=spec["reuse"],
        negative_from=spec["negative_from"],
    )


class Trainer:
    """One estimator's run of `total_steps` steps: the module's public training step and the optimizer and
    LR schedule it builds for that many steps; batches of training captions drawn with replacement."""

    def __init__(self, spec: dict, seed: int, total_steps: int):
        from renegx.toyworld import train_prompts

        # the rollout source seeds its training noise from the global seed
        torch.manual_seed(seed)
        self.spec, self.module = spec, build_module(spec)
        self.optimizer, self.lr_schedule = self.module.optimizer_and_schedule(total_steps)
        self.picks, self.training = torch.Generator().manual_seed(seed), train_prompts()

    def step(self) -> None:
        picks = torch.randint(len(self.training), (self.spec["batch"],), generator=self.picks).tolist()
        loss, _ = self.module.training_loss([self.training[i] for i in picks])
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.lr_schedule.step()

    @property
    def negative(self) -> torch.Tensor:
        return self.module.negative_embeds.detach().clone()


def step_cost(spec: dict, steps: int = 6) -> float:
    """CPU-seconds per optimizer step, the first (warm-up) step left out."""
    trainer = Trainer(spec, seed=12345, total_steps=steps)
    trainer.step()
    began = time.process_time()
    for _ in range(steps - 1):
        trainer.step()
    return (time.process_time() - began) / (steps - 1)


def step_phases(steps: int = 6) -> dict[str, float]:
    """CPU-seconds per paper step in its three parts — the no-grad rollout, the guided grad step (forward and
    backward) and the decode + reward (forward and backward) — the first (warm-up) step left out.

    The decode + reward share bounds what any latent reward can buy: a step whose decode and reward were free
    would be at most `1 / (1 − share)` times as fast (`latent_reward_ceiling`).
    """
    from renegx.guidance import one_step_x0
    from renegx.models.backbone import decode_latents
    from renegx.toyworld import train_prompts
    from renegx.train.step import draw_stops, initial_latents, rollouts

    module, training, generator = (
        build_module(settings("paper")),
        train_prompts(),
        torch.Generator().manual_seed(12345),
    )
    backbone, schedule, recipe, negative = (
        module.backbone,
        module.schedule,
        module.recipe,
        module.negative_embeds,
    )
    spent = {"rollout": 0.0, "grad_step": 0.0, "decode_reward": 0.0}
    for index in range(steps):
        picks = torch.randint(len(training), (BASE["batch"],), generator=generator).tolist()
        prompts = [training[i] for i in picks]
        latents = initial_latents(backbone, len(prompts), generator, module.device)
        stops = draw_stops(len(schedule), recipe, generator)
        embeds = backbone.encode_prompts(prompts)
        clock = [time.process_time()]
        (x_t,) = rollouts(backbone, schedule, recipe, latents, negative, embeds, stops)
        clock.append(time.process_time())
        x0 = one_step_x0(backbone.unet, schedule, x_t, stops[0], negative, embeds, recipe.guidance_scale)
        leaf = x0.detach().requires_grad_(True)
        clock.append(time.process_time())
        rewards = module.reward(decode_latents(backbone.vae, leaf, recipe.decode_size), prompts)
        (to_x0,) = torch.autograd.grad(-rewards.mean(), leaf)
        clock.append(time.process_time())
        torch.autograd.grad(x0, negative, to_x0)
        clock.append(time.process_time())
        if index:
            spent["rollout"] += clock[1] - clock[0]
            spent["decode_reward"] += clock[3] - clock[2]
            spent["grad_step"] += (clock[2] - clock[1]) + (clock[4] - clock[3])
    per_step = {name: seconds / (steps - 1) for name, seconds in spent.items()}
    total = sum(per_step.values())
    shares = {f"{name}_share": seconds / total for name, seconds in per_step.items()}
    return {**per_step, **shares, "latent_reward_ceiling": 1 / (1 - shares["decode_reward_share"])}


# -- the runs and their readings -------------------------------------------------------------------------
def evaluation_sets(options: dict) -> dict[str, tuple[list[str], list[int]]]:
    """Set A and set B: (prompts, noise seeds) each, from `--split`/`--eval-seeds` and
    `--second-split`/`--second-seeds`, `--eval-prompts` prompts each."""
    from renegx.toyworld.splits import prompts_of_split

    count = options["eval_prompts"]
    return {
        "A": (prompts_of_split(options["split"], count), [int(s) for s in options["eval_seeds"].split(",")]),
        "B": (
            prompts_of_split(options["second_split"], count),
            [int(s) for s in options["second_seeds"].split(",")],
        ),
    }


def readings_on_sets(module, negatives: dict[str, torch.Tensor], options: dict) -> dict[str, dict]:
    """Set → negative → per-picture readings `(N,)` (both judges, the ground truth's measures), and set →
    each picture's prompt index under `"clusters"`: every negative drawn from the same noise."""
    from renegx.evaluate.held_out import draw_and_judge
    from renegx.toyworld.truth import load_reader

    read, out = load_reader(), {}
    for name, (prompts, seeds) in evaluation_sets(options).items():
        pictures, scores, clusters = draw_and_judge(module, negatives, prompts, seeds, JUDGES)
        texts = [prompts[i] for i in clusters]
        out[name] = {"clusters": clusters}
        for negative, images in pictures.items():
            readings = read(images, texts)
            out[name][negative] = {
                m: np.asarray(scores[m][negative] if m in JUDGES else readings[m], dtype=np.float64)
                for m in MEASURES
            }
    return out


def train_run(job: tuple[str, int, float, float, dict]) -> dict:
    """One (estimator, seed) run given `fraction` of the budget: its step count from the estimator's CPU
    per step, its schedule decaying to its own end; then its embedding read on both evaluation sets."""
    name, seed, fraction, per_step, options = job
    torch.set_num_threads(1)
    total = max(1, round(fraction * options["budget"] / per_step))
    trainer, spent, older = Trainer(settings(name), seed, total), 0.0, None
    for step in range(total):
        began = time.process_time()
        trainer.step()
        spent += time.process_time() - began
        if step == total - 3:  # the embedding two steps before the end: what reuse-4's rollouts saw
            older = trainer.negative
    negative = trainer.negative
    readings = readings_on_sets(trainer.module, {"learned": negative}, options)
    return {
        "estimator": name,
        "seed": seed,
        "fraction": fraction,
        "steps": total,
        "cpu_s": spent,
        "negative": negative,
        "older": negative if older is None else older,
        "readings": {k: v["learned"] for k, v in readings.items()},
    }


def null_readings(options: dict) -> dict:
    """The null's readings and the pictures' prompt indices on both sets."""
    torch.set_num_threads(1)
    module = build_module(settings("paper"))
    readings = readings_on_sets(module, {"null": module.null_embeds}, options)
    return {k: {"readings": v["null"], "clusters": v["clusters"]} for k, v in readings.items()}


# -- bias: expected gradients on fixed noise ---------------------------------------------------------------
def expected_gradient(module, prompts: list[str], latents: torch.Tensor, rollout_negative: torch.Tensor):
    """The mean gradient over every stop of the last K, each from the recipe's rollout with
    `rollout_negative` (x_t) and the grad step with the module's current embedding."""
    from renegx.train.step import loss_at_stops, rollouts

    backbone, schedule, recipe = module.backbone, module.schedule, module.recipe
    stops = list(range(len(schedule) - recipe.stop_steps, len(schedule)))
    embeds = backbone.encode_prompts(prompts)
    x_ts = rollouts(backbone, schedule, recipe, latents, rollout_negative, embeds, stops)
    total = torch.zeros_like(module.negative_embeds)
    for x_t, stop in zip(x_ts, stops, strict=True):
        loss, _ = loss_at_stops(
            backbone, module.reward, schedule, recipe, prompts, [x_t], [stop], module.negative_embeds, embeds
        )
        total += torch.autograd.grad(loss, module.negative_embeds)[0]
    return total.flatten() / len(stops)


def bias_cosines(names: list[str], current: torch.Tensor, older: torch.Tensor, prompts: int = 8) -> dict:
    """Cosine of each estimator's expected gradient with the paper's, on the same noise and embedding."""
    from renegx.toyworld import train_prompts
    from renegx.train.step import initial_latents

    torch.set_num_threads(1)
    texts = train_prompts()[:prompts]
    grads = {}
    for name in dict.fromkeys(["paper", *names]):
        spec = settings(name)
        module = build_module(spec)
        with torch.no_grad():
            module.negative_embeds.copy_(current)
        latents = initial_latents(module.backbone, prompts, torch.Generator().manual_seed(777), module.device)
        rollout_negative = older if spec["reuse"] > 1 else current
        grads[name] = expected_gradient(module, texts, latents, rollout_negative)
        if name == "paper":  # the scale of a cosine here: the paper's own, on other noise
            other = initial_latents(
                module.backbone, prompts, torch.Generator().manual_seed(778), module.device
            )
            grads["paper, other noise"] = expected_gradient(module, texts, other, current)
    return {name: F.cosine_similarity(grads[name], grads["paper"], dim=0).item() for name in grads}


# -- FLOPs at SD1.5 shapes ---------------------------------------------------------------------------------
def _meta_tflop(forward) -> float | None:
    """TFLOP of `forward()` run with its modules built on the meta device (no weights, no compute)."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with torch.device("meta"), counter, torch.no_grad():
            forward()
        return counter.get_total_flops() / 1e12
    except Exception:  # noqa: BLE001 — a library without meta support: report no figure
        return None


def unet_tflop_per_call(batch: int = 1) -> float | None:
    """TFLOP of one SD1.5-shaped UNet forward at 512² for `batch` latents."""

    def forward():
        from bench.models import sd15_components

        unet = sd15_components()["unet"]
        unet(torch.empty(batch, 4, 64, 64), 500, encoder_hidden_states=torch.empty(batch, 77, 768))

    return _meta_tflop(forward)


def decode_reward_tflop() -> float | None:
    """TFLOP of what a latent reward skips, forward, one sample at SD1.5 shapes: the VAE decode of a 64²
    latent to 512² and a ViT-H-14 image tower at 224² (the HPSv2/PickScore judges' size)."""

    def forward():
        from transformers import CLIPVisionModelWithProjection

        from bench.models import sd15_components, vit_h_14_config

        sd15_components()["vae"].decode(torch.empty(1, 4, 64, 64))
        tower = CLIPVisionModelWithProjection(vit_h_14_config().vision_config)
        tower(pixel_values=torch.empty(1, 3, 224, 224))

    return _meta_tflop(forward)


def tflop_per_sample(spec: dict, per_call: float | None, num_inference_steps: int = 20) -> float | None:
    """UNet TFLOP per training sample: the rollout (2 per call for CFG, amortised over reuse) plus the grad
    step (prompt branch, negative branch forward and its backward ≈ 2 forwards)."""
    if per_call is None:
        return None
    k, stride = spec["stop_steps"], spec["rollout_stride"]
    mean_calls = sum(-(-stop // stride) for stop in range(num_inference_steps - k, num_inference_steps)) / k
    return per_call * (2 * mean_calls / spec["reuse"] + 4)


# -- the decision ----------------------------------------------------------------------------------------
def _cells(readings: np.ndarray, clusters: np.ndarray, prompts: int) -> tuple[np.ndarray, np.ndarray]:
    """Per (training seed, prompt): the sum and count of the known readings of `readings` `(S, N)`."""
    known = ~np.isnan(readings)
    sums = np.stack(
        [np.bincount(clusters, np.where(k, r, 0.0), prompts) for r, k in zip(readings, known, strict=True)]
    )
    counts = np.stack([np.bincount(clusters, k.astype(np.float64), prompts) for k in known])
    return sums, counts


def difference_interval(
    arm: np.ndarray, base: np.ndarray, clusters: np.ndarray, resamples: int = RESAMPLES, seed: int = 0
) -> dict:
    """mean(arm) − mean(base) as an estimate (`Estimate.to_json()`'s shape, n: the prompts): the 95%
    percentile bootstrap that resamples prompts (`clusters` of the pictures, paired: both arms read the same
    pictures' noise) and training seeds (the rows of `arm` `(S, N)` and, paired by row, of `base` `(S, N)`; a
    `(1, N)` base, the null, has no seeds). NaN: unread."""
    prompts = int(clusters.max()) + 1
    (arm_sums, arm_counts), (base_sums, base_counts) = (_cells(x, clusters, prompts) for x in (arm, base))
    rng = np.random.default_rng(seed)
    seeds = arm.shape[0]
    by_prompt = np.stack(
        [np.bincount(row, minlength=prompts) for row in rng.integers(0, prompts, (resamples, prompts))]
    )
    by_seed = np.stack(
        [np.bincount(row, minlength=seeds) for row in rng.integers(0, seeds, (resamples, seeds))]
    )
    base_seed = by_seed if base.shape[0] == seeds else np.ones((resamples, 1))

    def means(weights: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
        return np.einsum("bs,sp,bp->b", weights, sums, by_prompt) / np.einsum(
            "bs,sp,bp->b", weights, counts, by_prompt
        )

    drawn = means(by_seed, arm_sums, arm_counts) - means(base_seed, base_sums, base_counts)
    low, high = np.nanquantile(drawn, [0.025, 0.975])
    value = float(np.nanmean(arm) - np.nanmean(base))
    return {"value": value, "low": float(low), "high": float(high), "n": prompts}


def passes(measure: str, interval: dict, margins: dict[str, float]) -> bool:
    """Non-inferiority of one measure's difference against the paper's final point, within its margin."""
    if measure in LOWER_IS_BETTER:
        return interval["high"] <= margins[measure]
    return interval["low"] >= -margins[measure]


def _stacked(runs: list[dict], part: str) -> dict[str, np.ndarray]:
    """Each measure's readings on set `part`, `(S, N)`: one row per training seed, in seed order."""
    runs = sorted(runs, key=lambda run: run["seed"])
    return {m: np.stack([run["readings"][part][m] for run in runs]) for m in MEASURES}


def summarise(results: list[dict], null: dict, names: list[str], margins: dict[str, float]) -> dict:
    """Per estimator and fraction: mean CPU-s and steps, and per set the gains over null and the differences
    from the paper's final point with their intervals, and whether it passes; then each estimator's smallest
    fraction passing on both sets, and the speed-up (module docstring)."""
    fractions = sorted({run["fraction"] for run in results})
    paper_final = {
        part: _stacked([r for r in results if r["estimator"] == "paper" and r["fraction"] == 1.0], part)
        for part in SETS
    }
    rows = []
    for name in names:
        for fraction in fractions:
            runs = [r for r in results if r["estimator"] == name and r["fraction"] == fraction]
            row = {
                "estimator": name,
                "fraction": fraction,
                "cpu_s": float(np.mean([r["cpu_s"] for r in runs])),
                "steps": float(np.mean([r["steps"] for r in runs])),
            }
            for part in SETS:
                arm, clusters = _stacked(runs, part), null[part]["clusters"]
                gain = {
                    m: difference_interval(arm[m], null[part]["readings"][m][None], clusters)
                    for m in MEASURES
                }
                versus = {m: difference_interval(arm[m], paper_final[part][m], clusters) for m in MEASURES}
                row[part] = {
                    "gain": gain,
                    "versus_paper_final": versus,
                    "passes": {m: passes(m, versus[m], margins) for m in MEASURES},
                }
                row[part]["reaches"] = all(row[part]["passes"].values())
            row["reaches"] = all(row[part]["reaches"] for part in SETS)
            rows.append(row)
    first = {}
    for name in names:
        reached = [row for row in rows if row["estimator"] == name and row["reaches"]]
        first[name] = min(reached, key=lambda row: row["fraction"]) if reached else None
    speedup, winner = None, None
    paper = first["paper"]
    for name in names:
        if name == "paper" or first[name] is None or paper is None:
            continue
        ratio = paper["cpu_s"] / first[name]["cpu_s"]
        if speedup is None or ratio > speedup:
            speedup, winner = ratio, name
    smallest = {name: None if row is None else row["fraction"] for name, row in first.items()}
    by_set = {
        part: {
            name: min(
                (r["fraction"] for r in rows if r["estimator"] == name and r[part]["reaches"]), default=None
            )
            for name in names
        }
        for part in SETS
    }
    return {
        "rows": rows,
        "smallest_fraction": smallest,
        "smallest_fraction_by_set": by_set,
        "speedup": speedup,
        "winner": winner,
    }


def _fraction(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from renegx.toyworld.splits import PHRASINGS

    splits = ("train", *PHRASINGS, "heldout")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--estimators", default=",".join(DEFAULT_RUN), help=f"from {', '.join(ESTIMATORS)}")
    parser.add_argument("--budget-steps", type=int, default=250, help="the budget: paper-faithful steps")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds")
    parser.add_argument("--workers", type=int, default=2, help="processes, one thread each")
    parser.add_argument("--split", choices=splits, default="heldout", help="set A's prompts")
    parser.add_argument("--eval-seeds", default="8000,8001", help="set A's noises")
    parser.add_argument("--second-split", choices=splits, default="reworded", help="set B's prompts")
    parser.add_argument("--second-seeds", default="9000,9001", help="set B's noises")
    parser.add_argument("--eval-prompts", type=int, default=32, help="prompts in each set")
    parser.add_argument(
        "--eval-at", default="0.125,0.25,0.5,1", help="fractions of the budget, each its own run"
    )
    for measure, margin in MARGINS.items():
        worse = "above" if measure in LOWER_IS_BETTER else "below"
        parser.add_argument(
            f"--margin-{measure.removeprefix('toy-')}",
            type=float,
            default=margin,
            help=f"non-inferiority margin: how far {worse} the paper's final {measure} the bound may be",
        )
    parser.add_argument("--out", default="time-to-quality.json")
    parser.add_argument("--quick", action="store_true", help="smoke run: budget of 6 steps, one seed")
    args = parser.parse_args(argv)
    unknown = [n for n in args.estimators.split(",") if n not in ESTIMATORS]
    if unknown or "paper" not in args.estimators.split(","):
        parser.error(
            f"--estimators must include paper and name only {', '.join(ESTIMATORS)}; got {args.estimators}"
        )
    if args.quick:
        args.budget_steps, args.seeds, args.eval_prompts = 6, "0", 4
        args.eval_seeds, args.second_seeds, args.eval_at = "8000", "9000", "0.5,1"
    if args.split == args.second_split or set(args.eval_seeds.split(",")) & set(args.second_seeds.split(",")):
        parser.error(
            "the two evaluation sets must differ in prompts and noises; got "
            f"{args.split} × {args.eval_seeds} "
            f"and {args.second_split} × {args.second_seeds}"
        )
    fractions = [float(f) for f in args.eval_at.split(",")]
    if 1.0 not in fractions or not all(0 < f <= 1 for f in fractions):
        parser.error(
            "--eval-at must be fractions in (0, 1] that include 1 (the paper's final point); "
            f"got {args.eval_at}"
        )
    return args


def margins_of(args: argparse.Namespace) -> dict[str, float]:
    return {m: getattr(args, f"margin_{m.removeprefix('toy-').replace('-', '_')}") for m in MEASURES}


def report_tables(summary: dict, names: list[str], margins: dict[str, float], report=print) -> None:
    """Every interval: per set, each point's gains over null, then its differences from the paper's final
    point with a mark where the margin holds (✓) or not (✗)."""
    from renegx.evaluate.protocol import format_estimate

    report(
        "margins (non-inferiority against the paper's final point): "
        + ", ".join(f"{m} {'+' if m in LOWER_IS_BETTER else '−'}{v:g}" for m, v in margins.items())
    )
    for part in SETS:
        report(f"set {part}: gain over null [95% CI]")
        report(
            f"{'estimator':<14} {'f':>6} {'CPU-s':>7} {'steps':>6} " + " ".join(f"{m:>26}" for m in MEASURES)
        )
        for row in summary["rows"]:
            gains = " ".join(f"{format_estimate(row[part]['gain'][m], 3):>26}" for m in MEASURES)
            report(
                f"{row['estimator']:<14} {row['fraction']:>6.3f} {row['cpu_s']:>7.1f} "
                f"{row['steps']:>6.0f} {gains}"
            )
        report(f"set {part}: minus the paper's final point [95% CI], ✓ within the margin")
        for row in summary["rows"]:
            marks = {m: " ✓" if row[part]["passes"][m] else " ✗" for m in MEASURES}
            cells = " ".join(
                f"{format_estimate(row[part]['versus_paper_final'][m], 3) + marks[m]:>28}" for m in MEASURES
            )
            verdict = "reaches" if row[part]["reaches"] else "short"
            report(f"{row['estimator']:<14} {row['fraction']:>6.3f} {cells} {verdict}")
    for name in names:
        by_set = ", ".join(f"set {p} {_fraction(summary['smallest_fraction_by_set'][p][name])}" for p in SETS)
        both = _fraction(summary["smallest_fraction"][name])
        report(
            f"{name}: smallest fraction of the budget reaching the paper's final quality: {both} ({by_set})"
        )


def main(argv: list[str] | None = None, report=print) -> float | None:
    args = parse_args(argv)
    names, margins = args.estimators.split(","), margins_of(args)
    torch.set_num_threads(1)
    began = time.time()
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.workers) as pool:
        per_step = dict(
            zip(names, pool.map(step_cost, [settings(n) for n in names], chunksize=1), strict=True)
        )
        budget = args.budget_steps * per_step["paper"]
        report(f"budget: {budget:.1f} CPU-s (= {args.budget_steps} paper steps, 1 thread)")
        keys = ("split", "eval_seeds", "second_split", "second_seeds", "eval_prompts")
        options = {"budget": budget, **{k: getattr(args, k) for k in keys}}
        fractions = sorted((float(f) for f in args.eval_at.split(",")), reverse=True)
        seeds = [int(s) for s in args.seeds.split(",")]
        # the longest runs first, so that the last ones to finish are short
        jobs = [(n, s, f, per_step[n], options) for f in fractions for n in names for s in seeds]
        waiting_null = pool.apply_async(null_readings, (options,))
        results = pool.map(train_run, jobs, chunksize=1)
        null = waiting_null.get()
    # the bias is measured at seed 0's paper run given half the budget (or the nearest fraction)
    paper_runs = [r for r in results if r["estimator"] == "paper" and r["seed"] == seeds[0]]
    half = min(paper_runs, key=lambda r: abs(r["fraction"] - 0.5))
    cosines = bias_cosines(list(ESTIMATORS), half["negative"], half["older"], prompts=2 if args.quick else 8)
    per_call = unet_tflop_per_call()
    phases = step_phases(3 if args.quick else 6)
    skipped = decode_reward_tflop()
    summary = summarise(results, null, names, margins)
    report_tables(summary, names, margins, report)
    report("estimator      steps at f=1  CPU-s/step  bias cosine  SD1.5 UNet TFLOP/sample")
    for name in names:
        steps = next(r["steps"] for r in results if r["estimator"] == name and r["fraction"] == 1.0)
        flops = tflop_per_sample(settings(name), per_call)
        report(
            f"{name:<14} {steps:>12} {per_step[name]:>11.3f} {cosines.get(name, float('nan')):>12.3f} "
            f"{flops if flops is None else round(flops, 2)!s:>24}"
        )
    for name in ESTIMATORS:
        if name not in names:
            report(f"{name} bias cosine (not trained here): {cosines[name]:.3f}")
    report(f"paper on other noise, cosine with paper: {cosines['paper, other noise']:.3f}")
    report(
        "paper step, CPU share: rollout {rollout_share:.1%}, grad step {grad_step_share:.1%}, "
        "decode + reward {decode_reward_share:.1%}; a latent reward (decode + reward free) is at most "
        "{latent_reward_ceiling:.2f}x as fast".format(**phases)
    )
    paper_flops = tflop_per_sample(settings("paper"), per_call)
    if skipped is not None and paper_flops is not None:
        # with grad through both: backward ≈ 2 forwards
        report(
            f"SD1.5 shapes: decode + ViT-H-14 reward {skipped:.2f} TFLOP forward per sample, "
            f"{3 * skipped:.1f} with backward, beside the paper's {paper_flops:.1f} UNet TFLOP; "
            f"a latent reward is at most {(paper_flops + 3 * skipped) / paper_flops:.2f}x by FLOPs"
        )
    speedup, winner = summary["speedup"], summary["winner"]
    record = {
        "budget_cpu_s": budget,
        "cpu_s_per_step": per_step,
        "settings": {name: settings(name) for name in names},
        "evaluation_sets": evaluation_sets(options),
        "margins": margins,
        "decision": summary,
        "bias_cosine": cosines,
        "unet_tflop_per_call_sd15": per_call,
        "paper_step_phases": phases,
        "decode_reward_tflop_sd15": skipped,
        "tflop_per_sample_sd15": {name: tflop_per_sample(settings(name), per_call) for name in names},
        "wall_s": time.time() - began,
        "args": vars(args),
    }
    from renegx.files import atomic_write_json

    atomic_write_json(args.out, record)
    report(f"wall: {time.time() - began:.0f} s; winner: {winner}")
    if speedup is None:
        report("time_to_quality_speedup: none")
    else:
        fraction, paper_fraction = summary["smallest_fraction"][winner], summary["smallest_fraction"]["paper"]
        report(
            f"time_to_quality_speedup: {speedup:.2f} ({winner} at f = {fraction:g} against paper at "
            f"f = {paper_fraction:g}, on both sets)"
        )
    return speedup


if __name__ == "__main__":
    main()
