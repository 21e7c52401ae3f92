"""Batched per-prompt tuning against one prompt at a time (Algorithm 1), alternating in one process.

    python -m bench.per_prompt --threads 1                 # 64 prompts, the tiny model on a CPU
    python -m bench.per_prompt --threads 1 --prompts 16 --rounds 2
    python -m bench.per_prompt --model toy --global-embedding runs/default/version_0/negative.safetensors
    python -m bench.per_prompt --model toy --global-embedding ... --frozen-dtype bfloat16   # both paths bf16
    python -m bench.per_prompt --model toy --global-embedding ... --prompt-source mine.txt   # other prompts
    python -m bench.per_prompt --model sd15 --device cuda --prompts 64 --batch-prompts 16 --steps 30

Both paths run `PerPromptTuner.tune` with the same settings on the same prompts: "one at a time" calls it once
per prompt (ReNeg's Algorithm 1, each prompt tuned to its stop before the next starts), "batched" tunes
`--batch-prompts` prompts per call: one `(N, L, D)` tensor, per-row Adam, early-stopping masks. Training
noise is drawn per (prompt, step), so both paths tune the same problem and the bench checks they agree (same
best and stop steps, same rows up to float rounding). Rounds alternate the order (AB, BA, ...), so drift and
other load on the machine fall on both sides; the ratio is of the summed wall times.

It then measures the batched bank against its global embedding on fresh seeds, with the tuning reward and with
an independent judge. On `toy` (the trained toy world) the judges are its preference judge and its independent
judge, and the global embedding should be one trained there (`--global-embedding`; default the null). On
`tiny` (random weights, the second judge another random tiny CLIP) the gains only show that the measurement
runs. The last line is `speedup_vs_one_at_a_time: <ratio>`.

Where the speed-up comes from: the script also reports the share of each path's time spent in no-grad UNet
calls (the evaluation sampling and the training rollouts) and the cost per latent of no-grad guided DDIM
steps at the one-at-a-time batch against the batched one. The second is what batching can buy on that work.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from bench.clocks import no_grad_seconds
from bench.models import WORLDS, build_world
from renegx.evaluate.protocol import format_estimate
from renegx.models.backbone import Backbone
from renegx.negatives.bank import EmbeddingBank
from renegx.negatives.embedding import NegativeEmbedding
from renegx.rewards import ClipScore, ToyIndependentJudge
from renegx.tiny import TINY_SEED, tiny_clip_model
from renegx.train.per_prompt import PerPromptSettings, PerPromptTuner, gain_over_global
from renegx.train.step import StepRecipe


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=WORLDS, default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompts", type=int, default=64, help="distinct prompts tuned by each path")
    parser.add_argument("--batch-prompts", type=int, default=64, help="prompts per batched call")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps T (train/tiny: 10)")
    parser.add_argument("--stop-steps", type=int, default=5, help="K, the grad step in the last K of T")
    parser.add_argument("--max-steps", type=int, default=10)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--eval-seeds", default="0,1", help="comma-separated evaluation seeds")
    parser.add_argument("--fresh-seeds", default="100,101,102,103", help="seeds for the gain measurement")
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--rounds", type=int, default=1, help="each round runs both paths once")
    parser.add_argument(
        "--rollout-rounds", type=int, default=3, help="rounds of the rollout cost per latent, both batches"
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--global-embedding", default=None, help="the global embedding file (default: null)")
    parser.add_argument(
        "--prompt-source",
        default=None,
        help="a builtin prompt set or a prompt file (default: the world's own; toy: its training split)",
    )
    parser.add_argument(
        "--frozen-dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="UNet/VAE weights of both paths (bf16 pays off where the work is compute-bound: large batches)",
    )
    return parser.parse_args(argv)


def independent_judge() -> ClipScore:
    """A second tiny CLIP with other random weights: a stand-in for a judge the bank was not tuned on."""
    judge = ClipScore(model="tiny")
    judge.model = tiny_clip_model(seed=TINY_SEED + 40)
    judge.name = "clip-tiny-other-seed"
    return judge.freeze()


class GroundTruthMeasure:
    """A toy-world ground-truth measure (`renegx.toyworld.truth`) where `gain_over_global` takes a judge:
    `defective` (lower is better) or `adherence` per picture."""

    def __init__(self, measure: str):
        from renegx.toyworld.truth import load_reader

        self.name, self.read = f"ground truth: {measure}", load_reader()
        self.measure = measure

    def to(self, device):
        return self

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return torch.from_numpy(self.read(images.cpu(), prompts)[self.measure]).float()


def rollout_seconds_per_latent(tuner: PerPromptTuner, prompts: list[str], latents: int, steps: int = 4):
    """Wall seconds per latent of `steps` no-grad guided DDIM steps with `latents` latents in one batch (each
    latent a CFG pair of UNet rows), as the evaluation and the training rollouts run them."""
    backbone = tuner.backbone
    prompt_embeds = backbone.encode_prompts(prompts).repeat(latents // len(prompts) + 1, 1, 1)[:latents]
    noise = torch.randn((latents, *backbone.latent_shape), generator=torch.Generator().manual_seed(0))
    noise = noise.to(tuner.device)
    steps = min(steps, len(tuner.schedule))
    began = time.perf_counter()
    tuner.guided_rollout(noise, backbone.null_embedding(), prompt_embeds, steps)
    return (time.perf_counter() - began) / latents


def _timed(run) -> tuple[float, object]:
    began = time.perf_counter()
    result = run()
    return time.perf_counter() - began, result


def report_rollout_ceiling(tuner: PerPromptTuner, prompts: list[str], args, report) -> None:
    """The no-grad rollout's cost per latent at the one-at-a-time evaluation batch against the batched one."""
    per_prompt = len(tuner.settings.eval_seeds) + tuner.settings.train_samples  # evaluation + next rollout
    sizes = {"one_at_a_time": per_prompt, "batched": per_prompt * min(args.batch_prompts, len(prompts))}
    rollout_seconds_per_latent(tuner, prompts, sizes["batched"], steps=1)  # warm-up
    ratios = []
    for round_index in range(args.rollout_rounds):
        order = list(sizes) if round_index % 2 == 0 else list(reversed(sizes))
        cost = {name: rollout_seconds_per_latent(tuner, prompts, sizes[name]) for name in order}
        ratios.append(cost["one_at_a_time"] / cost["batched"])
    report(
        f"no-grad rollout, cost per latent at {sizes['one_at_a_time']} latents over at {sizes['batched']}: "
        f"min {min(ratios):.2f}  median {statistics.median(ratios):.2f}  max {max(ratios):.2f} "
        f"over {len(ratios)} rounds (what batching buys on that work)"
    )


def main(argv: list[str] | None = None, report=print) -> float:
    """Run the benchmark; returns the speed-up of batched tuning over one prompt at a time."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    world = build_world(args.model, prompt_pool=args.prompts, prompt_source=args.prompt_source)
    prompts = list(dict.fromkeys(world.prompts))
    backbone = Backbone(world.components, name=world.name).to(args.device)
    backbone.configure_performance(frozen_dtype=args.frozen_dtype)
    reward = world.reward.to(args.device)
    settings = PerPromptSettings(
        max_steps=args.max_steps,
        patience=args.patience,
        eval_seeds=tuple(int(s) for s in args.eval_seeds.split(",")),
        batch_prompts=args.batch_prompts,
        lr=args.lr,
    )
    global_embeds, negative_from = backbone.null_embedding(), 0.0
    if args.global_embedding:
        global_file = NegativeEmbedding.load(args.global_embedding)
        global_embeds, negative_from = global_file.embeds.to(args.device), global_file.negative_from
    tuner = PerPromptTuner(
        backbone,
        reward,
        num_inference_steps=args.steps,
        recipe=StepRecipe(stop_steps=args.stop_steps, negative_from=negative_from),  # as the global run's
        settings=settings,
    )
    cpu = platform.processor() or platform.machine()
    report(f"# {cpu}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    report(f"# {world.describe()}")
    report(
        f"# {len(prompts)} prompts, T={args.steps}, K={args.stop_steps}, N={args.max_steps}, "
        f"P={args.patience}, eval seeds {list(settings.eval_seeds)}, batch {args.batch_prompts}, "
        f"{args.frozen_dtype} UNet/VAE"
    )

    def one_at_a_time():
        tuned = [tuner.tune([prompt], global_embeds) for prompt in prompts]
        return torch.cat([rows for rows, _ in tuned]), [result for _, (result,) in tuned]

    def batched():
        size = args.batch_prompts
        tuned = [tuner.tune(prompts[i : i + size], global_embeds) for i in range(0, len(prompts), size)]
        return torch.cat([rows for rows, _ in tuned]), [r for _, results in tuned for r in results]

    paths = {"one_at_a_time": one_at_a_time, "batched": batched}
    seconds = dict.fromkeys(paths, 0.0)
    no_grad_unet = dict.fromkeys(paths, 0.0)
    outcome = {}
    for round_index in range(args.rounds):
        order = list(paths) if round_index % 2 == 0 else list(reversed(paths))
        for name in order:
            with no_grad_seconds(backbone.unet) as in_unet:
                elapsed, outcome[name] = _timed(paths[name])
            seconds[name] += elapsed
            no_grad_unet[name] += in_unet[0]
            report(f"round {round_index}: {name:14s} {elapsed:8.2f} s")
    for name in paths:
        report(f"{name}: {no_grad_unet[name] / seconds[name]:.1%} of the time in no-grad UNet calls")
    report_rollout_ceiling(tuner, prompts, args, report)

    (rows_a, results_a), (rows_b, results_b) = outcome["one_at_a_time"], outcome["batched"]
    same_steps = sum(
        (a.best_step, a.stop_step) == (b.best_step, b.stop_step)
        for a, b in zip(results_a, results_b, strict=True)
    )
    stop_steps = [r.stop_step for r in results_b]
    report(
        f"agreement: {same_steps}/{len(prompts)} prompts with the same best and stop step; "
        f"max |row difference| {(rows_a - rows_b).abs().max().item():.2e}"
    )
    improved = sum(r.best_step > 0 for r in results_b)
    report(
        f"batched: {improved}/{len(prompts)} improved on the evaluation seeds, "
        f"mean gain {sum(r.gain for r in results_b) / len(prompts):+.5f}, "
        f"mean stop step {sum(stop_steps) / len(stop_steps):.2f}"
    )

    bank = EmbeddingBank(NegativeEmbedding(rows_b), prompts, NegativeEmbedding(global_embeds.cpu()))
    fresh = [int(s) for s in args.fresh_seeds.split(",")]
    judges = {
        "tiny": [None, independent_judge()],
        "toy": [
            None,
            ToyIndependentJudge(),
            GroundTruthMeasure("defective"),
            GroundTruthMeasure("adherence"),
        ],
    }.get(args.model, [None])
    judges = [j if j is None else j.to(args.device) for j in judges]
    for judge in judges:  # None: the tuning reward
        judged = gain_over_global(tuner, bank, prompts, fresh, judge=judge)
        report(
            f"fresh seeds {fresh}, judge {judged['judge']}: bank {judged['mean_bank']:.5f} vs global "
            f"{judged['mean_global']:.5f}, gain [95% CI] {format_estimate(judged['gain'], 5)}, "
            f"win rate {judged['win_rate']:.2f}"
        )

    speedup = seconds["one_at_a_time"] / seconds["batched"]
    report(f"speedup_vs_one_at_a_time: {speedup:.2f}")
    return speedup


if __name__ == "__main__":
    main()
