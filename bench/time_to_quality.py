"""Time to quality: held-out gain and ground truth per CPU-second, for cheaper gradient estimators.

    python -m bench.time_to_quality                          # ≤ 25 minutes on 2 cores (2 workers × 1 thread)
    python -m bench.time_to_quality --split train            # where estimators are chosen
    python -m bench.time_to_quality --quick                  # a smoke run: tiny budget, one seed

Every estimator trains a toy-world embedding as the default config does (toy model, `toy-pref`, the training
captions, DDIM 20, w = 7.5, K = 7, AdamW with cosine decay; `paper` at lr 0.01 with the negative at every
step, the paper's recipe) for the same CPU budget: the CPU-seconds the paper-faithful step
needs for `--budget-steps` steps, measured on this machine before the runs. Each run sets its number of steps
from its own measured cost per step, so that it spends that budget. At fractions of the budget (`--eval-at`)
it saves its embedding; each is drawn on the evaluation prompts × seeds (each prompt its own noise, the same
for every embedding) and read by both toy judges and the ground truth (`renegx.toyworld.truth`). Intermediate
points are those of the full run (its learning rate not yet decayed) — conservative for the early points.

Estimators (`ESTIMATORS`): `paper` (full-resolution no-grad rollout to a stop uniform in the last K),
`coarse-S` (the rollout takes one UNet call per S DDIM steps, `model.rollout_stride`), `reuse-R` (a rollout's
x_t serve R optimizer steps, `model.reuse_rollouts`),
`last-step` (K = 1: the grad step always at the last step), `batch-8` (8 prompts, twice the learning rate,
about half the steps), `coarse-4-lr-2x` (coarse-4 at twice the learning rate), `late-lr-4x` (the toy
default's recipe: the negative acts on the second half of the schedule, `model.negative_from: 0.5`, at four
times the rate; its evaluation draws it the same way). The default run trains
`DEFAULT_RUN`; the bias is measured for all of them. Each one's bias is the cosine of its expected gradient
with the paper's on fixed noise (the expectation over the stop draw taken exactly: every stop of the last
K), at the paper run's halfway embedding; `reuse-R` rolls out with the embedding R/2 steps older.

The last line: `time_to_quality_speedup: X` = the CPU-seconds `paper` spends to its own final toy-pref gain ÷
the fewest CPU-seconds another estimator needs to reach that gain (its first evaluated point at or above it,
mean over training seeds) with ground truth not worse than `paper`'s final point (defective share: the paired
CI of the difference not above 0 at its lower bound; adherence: not below 0 at its upper bound).
FLOPs per sample at SD1.5 shapes (512², UNet counted on the meta device) are printed beside each estimator.
The paper step's CPU split (rollout / grad step / decode + reward, `step_phases`) is printed with the
ceiling it puts on a latent reward, which would skip only the decode and the pixel judge.
"""

from __future__ import annotations

import argparse
import math
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


def settings(name: str) -> dict:
    return {**BASE, **ESTIMATORS[name]}


def _module(spec: dict):
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
    """The default config's loop with one estimator: the step of `renegx.train.step`, AdamW, cosine."""

    def __init__(self, spec: dict, seed: int):
        torch.manual_seed(seed)
        self.spec, self.module = spec, _module(spec)
        self.optimizer = torch.optim.AdamW([self.module.negative_embeds], lr=spec["lr"], weight_decay=0.0)
        self.generator = torch.Generator().manual_seed(seed)
        from renegx.toyworld import train_prompts

        self.training, self.step_index = train_prompts(), 0

    def step(self, total_steps: int) -> None:
        from renegx.train.step import loss_at_stops

        module, spec = self.module, self.spec
        picks = torch.randint(len(self.training), (spec["batch"],), generator=self.generator).tolist()
        # the module's own choice of fresh or reused x_t (its noise generator, its `reuse_rollouts`)
        prompts, negative = [self.training[i] for i in picks], module.negative_embeds.detach()
        rolled = module.rollout_source.rollouts_for(module.schedule, prompts, negative)
        embeds = module.backbone.encode_prompts(rolled.prompts)
        backbone, schedule, recipe, negative = (
            module.backbone,
            module.schedule,
            module.recipe,
            module.negative_embeds,
        )
        loss, _ = loss_at_stops(
            backbone,
            module.reward,
            schedule,
            recipe,
            rolled.prompts,
            rolled.x_ts,
            rolled.stops,
            negative,
            embeds,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = spec["lr"] * 0.5 * (1 + math.cos(math.pi * min(1.0, self.step_index / total_steps)))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.step_index += 1


def step_cost(spec: dict, steps: int = 6) -> float:
    """CPU-seconds per optimizer step, the first (warm-up) step left out."""
    trainer = Trainer(spec, seed=12345)
    trainer.step(steps)
    began = time.process_time()
    for _ in range(steps - 1):
        trainer.step(steps)
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
        _module(settings("paper")),
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


def _evaluation(module, args):
    from bench.toy_diagnosis import Evaluation
    from renegx.toyworld import heldout_prompts, train_prompts

    prompts = train_prompts()[-args.eval_prompts :] if args.split == "train" else heldout_prompts()
    return Evaluation(module, prompts[: args.eval_prompts], [int(s) for s in args.eval_seeds.split(",")])


def train_run(job: tuple[str, int, float, dict]) -> dict:
    """One (estimator, seed) run to `budget` CPU-seconds; its readings at each fraction of the budget."""
    name, seed, budget, options = job
    torch.set_num_threads(1)
    args = argparse.Namespace(**options)
    spec = settings(name)
    total = max(1, round(budget / step_cost(spec)))
    trainer = Trainer(spec, seed)
    marks = sorted(float(f) for f in args.eval_at.split(","))
    saved, spent = [], 0.0
    for step in range(1, total + 1):
        began = time.process_time()
        trainer.step(total)
        spent += time.process_time() - began
        while marks and (spent >= marks[0] * budget or step == total):
            saved.append((step, spent, trainer.module.negative_embeds.detach().clone()))
            marks.pop(0)
    evaluation = _evaluation(trainer.module, args)
    points = []
    for step, cpu_s, embeds in saved:
        readings = evaluation.measure(evaluation.draw(embeds))
        points.append({"step": step, "cpu_s": cpu_s, "readings": readings})
    return {"estimator": name, "seed": seed, "steps": total, "points": points}


def null_readings(options: dict) -> dict:
    torch.set_num_threads(1)
    args = argparse.Namespace(**options)
    module = _module(settings("paper"))
    evaluation = _evaluation(module, args)
    return {
        "readings": evaluation.measure(evaluation.draw(module.null_embeds)),
        "clusters": evaluation.clusters,
    }


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
        module = _module(spec)
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


# -- the summary -------------------------------------------------------------------------------------------
def _pooled(runs: list[dict], index: int) -> dict[str, np.ndarray]:
    """Readings of every seed's `index`-th point, concatenated seed after seed."""
    return {
        key: np.concatenate([run["points"][index]["readings"][key] for run in runs])
        for key in runs[0]["points"][index]["readings"]
    }


def summarise(results: list[dict], null: dict, names: list[str]) -> tuple[dict, float | None, str | None]:
    from renegx.toyworld.truth import truth_table

    by_name = {name: [r for r in results if r["estimator"] == name] for name in names}
    seeds = len(by_name["paper"])
    clusters = np.concatenate([null["clusters"]] * seeds)
    null_pooled = {k: np.concatenate([v] * seeds) for k, v in null["readings"].items()}
    table, readings = {}, {}  # per estimator: its points' gains; their pooled per-picture readings
    for name, runs in by_name.items():
        points = min(len(run["points"]) for run in runs)
        table[name], readings[name] = [], []
        for index in range(points):
            pooled = _pooled(runs, index)
            row = truth_table({"null": null_pooled, name: pooled}, clusters)[name]
            cpu_s = float(np.mean([run["points"][index]["cpu_s"] for run in runs]))
            table[name].append({"cpu_s": cpu_s, **{m: row[f"{m}_minus_null"] for m in MEASURES}})
            readings[name].append(pooled)
    paper_final, paper_readings = table["paper"][-1], readings["paper"][-1]
    target, paper_cpu = paper_final["toy-pref"][0], paper_final["cpu_s"]
    best, winner = None, None
    for name in names:
        if name == "paper":
            continue
        for row, pooled in zip(table[name], readings[name], strict=True):
            if row["toy-pref"][0] < target:
                continue
            versus = truth_table({"paper": paper_readings, name: pooled}, clusters, "paper")[name]
            defective, adherence = versus["defective_minus_paper"], versus["adherence_minus_paper"]
            row["versus_paper"] = {"defective": defective, "adherence": adherence}
            if defective[1] <= 0 and adherence[2] >= 0:
                speedup = paper_cpu / row["cpu_s"]
                if best is None or speedup > best:
                    best, winner = speedup, name
            break
    return table, best, winner


def _fmt(ci: list[float]) -> str:
    return f"{ci[0]:+.3f} [{ci[1]:+.3f},{ci[2]:+.3f}]"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--estimators", default=",".join(DEFAULT_RUN), help=f"from {', '.join(ESTIMATORS)}")
    parser.add_argument("--budget-steps", type=int, default=250, help="the budget: paper-faithful steps")
    parser.add_argument("--seeds", default="0,1", help="training seeds")
    parser.add_argument("--workers", type=int, default=2, help="processes, one thread each")
    parser.add_argument("--split", choices=("train", "heldout"), default="heldout")
    parser.add_argument("--eval-prompts", type=int, default=32)
    parser.add_argument("--eval-seeds", default="5000,5001", help="fresh noise for the evaluation")
    parser.add_argument("--eval-at", default="0.125,0.25,0.5,1", help="fractions of the budget")
    parser.add_argument("--out", default="time-to-quality.json")
    parser.add_argument("--quick", action="store_true", help="smoke run: budget of 6 steps, one seed")
    args = parser.parse_args(argv)
    unknown = [n for n in args.estimators.split(",") if n not in ESTIMATORS]
    if unknown or "paper" not in args.estimators.split(","):
        parser.error(
            f"--estimators must include paper and name only {', '.join(ESTIMATORS)}; got {args.estimators}"
        )
    if args.quick:
        args.budget_steps, args.seeds, args.eval_prompts, args.eval_seeds = 6, "0", 4, "5000"
        args.eval_at = "0.5,1"
    return args


def main(argv: list[str] | None = None, report=print) -> float | None:
    args = parse_args(argv)
    names = args.estimators.split(",")
    torch.set_num_threads(1)
    began = time.time()
    budget = args.budget_steps * step_cost(settings("paper"))
    report(f"budget: {budget:.1f} CPU-s (= {args.budget_steps} paper steps, 1 thread)")
    options = {k: getattr(args, k) for k in ("split", "eval_prompts", "eval_seeds", "eval_at")}
    jobs = [(name, int(seed), budget, options) for name in names for seed in args.seeds.split(",")]
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.workers) as pool:
        waiting_null = pool.apply_async(null_readings, (options,))
        results = pool.map(train_run, jobs, chunksize=1)
        null = waiting_null.get()
    paper_runs = [r for r in results if r["estimator"] == "paper"]
    # the embeddings the bias is measured at: seed 0's paper run, halfway (and R/2 steps before for reuse)
    half = Trainer(settings("paper"), seed=0)
    steps = paper_runs[0]["steps"]
    history = {}
    for _ in range(steps // 2):
        half.step(steps)
        history[half.step_index] = half.module.negative_embeds.detach().clone()
    current = history[max(history)]
    older = history.get(max(history) - 2, current)
    cosines = bias_cosines(list(ESTIMATORS), current, older, prompts=2 if args.quick else 8)
    per_call = unet_tflop_per_call()
    phases = step_phases(3 if args.quick else 6)
    skipped = decode_reward_tflop()
    table, speedup, winner = summarise(results, null, names)
    report(
        f"{'estimator':<10} {'CPU-s':>7} {'toy-pref gain':>26} {'independent gain':>26} "
        f"{'defective − null':>26} {'adherence − null':>26}"
    )
    for name in names:
        for row in table[name]:
            report(f"{name:<10} {row['cpu_s']:>7.1f} " + " ".join(f"{_fmt(row[m]):>26}" for m in MEASURES))
    report("estimator  steps  CPU-s/step  bias cosine  SD1.5 UNet TFLOP/sample")
    for name in names:
        run = next(r for r in results if r["estimator"] == name)
        per_step = run["points"][-1]["cpu_s"] / run["steps"]
        flops = tflop_per_sample(settings(name), per_call)
        report(
            f"{name:<10} {run['steps']:>5} {per_step:>11.3f} {cosines.get(name, float('nan')):>12.3f} "
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
    record = {
        "budget_cpu_s": budget,
        "settings": {name: settings(name) for name in names},
        "curves": table,
        "bias_cosine": cosines,
        "unet_tflop_per_call_sd15": per_call,
        "paper_step_phases": phases,
        "decode_reward_tflop_sd15": skipped,
        "tflop_per_sample_sd15": {name: tflop_per_sample(settings(name), per_call) for name in names},
        "winner": winner,
        "time_to_quality_speedup": speedup,
        "wall_s": time.time() - began,
        "args": vars(args),
    }
    from renegx.files import atomic_write_json

    atomic_write_json(args.out, record)
    report(f"wall: {time.time() - began:.0f} s; winner: {winner}")
    report(f"time_to_quality_speedup: {'none' if speedup is None else f'{speedup:.2f}'}")
    return speedup


if __name__ == "__main__":
    main()
