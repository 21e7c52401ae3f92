"""Speed and memory of renegx's training step against a naive reference, alternating in one process.

    python -m bench.train_step --threads 1                      # tiny model on a CPU: renegx vs naive
    python -m bench.train_step --threads 1 --ablate all         # + every optimisation, on against off
    python -m bench.train_step --model sd15 --device cuda --batch-size 4 --frozen-dtype bfloat16 \\
        --gradient-checkpointing --ablate all                   # SD1.5 + ViT-H-14 shapes at 512², a GPU

The naive reference is ReNeg's step as first written: the prompts re-encoded by the text encoder every step,
the grad step as one batched CFG call on cat([n, c]) with grad through both branches, fp32, no checkpointing,
diffusers' DDIMScheduler. renegx's step is `ReNegModule.step_loss` (what `training_step` runs) with the
switches given on the command line. Every path gets the same prompts, noise and stop indices (uniform over the
last K of T DDIM steps), then backward and an AdamW step; paths alternate round by round (ABBA), so drift and
other load on the machine fall on both sides of each round's ratio. Samples/s counts the images whose gradient
reaches the embedding; peak memory is that of the tensors a step allocates (weights not included). The last
line is `speedup_vs_naive: <median ratio>` for the model that ran.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch

from bench.clocks import no_grad_seconds
from bench.meters import device_name, measure, peak_tflops, rollout_mfu, sync
from bench.models import WORLDS, World, build_world
from bench.step_paths import (
    NaiveStep,
    RenegxStep,
    Round,
    agreement,
    samples,
    train_step,
    weight_bytes,
)

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


# -- timing --------------------------------------------------------------------------------------------------
@dataclass
class Timing:
    seconds: dict[str, list[float]]
    samples: dict[str, int]
    ratios: list[float]  # per round: samples/s of `on` over samples/s of `off`
    cuda_peak: dict[str, int]
    no_grad_unet: dict[str, float]  # seconds in no-grad UNet calls (the rollout), CPU only


def alternate(
    off, on, rounds: list[Round], warmup: int, device: torch.device, clock=time.perf_counter
) -> Timing:
    """Both paths on each round, in ABBA order; the first `warmup` rounds are not recorded."""
    paths = {"off": off, "on": on}
    timing = Timing(
        {"off": [], "on": []}, {"off": 0, "on": 0}, [], {"off": 0, "on": 0}, {"off": 0.0, "on": 0.0}
    )
    for index, rnd in enumerate(rounds):
        order = ("off", "on") if index % 2 == 0 else ("on", "off")
        elapsed = {}
        for name in order:
            sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            with no_grad_seconds(paths[name].unet, clock) as in_unet:
                start = clock()
                train_step(paths[name], rnd)
                sync(device)
                elapsed[name] = clock() - start
            if index >= warmup:
                timing.no_grad_unet[name] += in_unet[0]
            if device.type == "cuda" and index >= warmup:
                used = torch.cuda.max_memory_allocated(device) - before
                timing.cuda_peak[name] = max(timing.cuda_peak[name], used)
        if index < warmup:
            continue
        for name in paths:
            timing.seconds[name].append(elapsed[name])
            timing.samples[name] += samples(paths[name], rnd)
        timing.ratios.append(
            (samples(on, rnd) / elapsed["on"]) / (samples(off, rnd) / elapsed["off"]),
        )
    return timing


def draw_rounds(world: World, args, device: torch.device) -> list[Round]:
    generator = torch.Generator().manual_seed(args.seed)
    shape = (args.batch_size, *_latent_shape(world))
    first = args.num_inference_steps - args.stop_steps
    rounds = []
    for index in range(args.warmup + args.steps):
        prompts = [
            world.prompts[(index * args.batch_size + i) % len(world.prompts)] for i in range(args.batch_size)
        ]
        latents = torch.randn(shape, generator=generator).to(device)
        stops = (first + torch.randint(args.stop_steps, (args.multi_stop,), generator=generator)).tolist()
        rounds.append(Round(prompts, latents, stops))
    return rounds


def _latent_shape(world: World) -> tuple[int, int, int]:
    config = world.components["unet"].config
    return (config.in_channels, config.sample_size, config.sample_size)


# -- comparisons ---------------------------------------------------------------------------------------------
@dataclass
class Comparison:
    name: str
    label: str
    off: object  # a factory of the path without the optimisation
    on: object
    check: bool = True  # compare loss and gradient for the same inputs
    exact: bool = True  # ... which should then agree up to float rounding (not so: bf16, decode size)


# Switches of renegx measured on against off: name -> (label, off, on, same gradient up to rounding?).
RENEGX_SWITCHES = {
    "bf16": (
        "frozen UNet/VAE in bf16, reward under autocast",
        {"frozen_dtype": "float32"},
        {"frozen_dtype": "bfloat16"},
        False,
    ),
    "sdpa": (
        "SDPA attention, against the classic AttnProcessor",
        {"attention": "classic"},
        {"attention": "sdpa"},
        True,
    ),
    "channels_last": ("channels_last memory format", {"channels_last": False}, {"channels_last": True}, True),
    "checkpointing": (
        "gradient checkpointing of the grad step's UNet and the VAE decoder",
        {"gradient_checkpointing": False},
        {"gradient_checkpointing": True},
        True,
    ),
    "decode_at_reward_size": (
        "decode x̂0 at the reward's input size (an approximation)",
        {"decode_at_reward_size": False},
        {"decode_at_reward_size": True},
        False,
    ),
    "compile": ("torch.compile of the UNet and VAE decoder", {"compile": False}, {"compile": True}, True),
}


def comparisons(world: World, args, device, switches: dict) -> dict[str, Comparison]:
    def naive(**flags):
        return lambda: NaiveStep(world, args, device, **flags)

    def renegx(**change):
        return lambda: RenegxStep(world, args, device, **{**switches, **change})

    fp32 = switches["frozen_dtype"] == "float32"
    table = {
        "naive": Comparison(
            "naive",
            "renegx against the naive reference",
            naive(),
            renegx(),
            check=switches["stops_per_rollout"] == 1,
            exact=fp32 and not switches["decode_at_reward_size"],
        ),
        "cache": Comparison(
            "cache", "prompt embeddings cached (naive path)", naive(), naive(cache_prompts=True)
        ),
        "positive_no_grad": Comparison(
            "positive_no_grad",
            "grad step: positive branch under no_grad (naive path)",
            naive(),
            naive(positive_no_grad=True),
        ),
    }
    for name, (label, off, on, exact) in RENEGX_SWITCHES.items():
        table[name] = Comparison(name, label, renegx(**off), renegx(**on), exact=exact and fp32)
    k = args.multi_stop
    table["multi_stop"] = Comparison(
        "multi_stop",
        f"shared-rollout multi-stop, {k} gradient stops per rollout (gradient samples/s)",
        renegx(stops_per_rollout=1),
        renegx(stops_per_rollout=k),
        check=False,
    )
    return table


def run_comparison(comparison: Comparison, rounds: list[Round], args, device, report) -> Timing:
    off, on = comparison.off(), comparison.on()
    report(f"\n== {comparison.label}")
    agree = True
    if comparison.check:
        text, agree = agreement(off, on, rounds[0], comparison.exact)
        report(f"same inputs, on vs off: {text}")
    costs = {"off": measure(off, rounds[0]), "on": measure(on, rounds[0])}
    timing = alternate(off, on, rounds, args.warmup, device, CLOCKS[args.clock])
    peak = peak_tflops(device, args.peak_tflops)
    mfu_column = f" {'MFU':>6}" if peak else ""
    report(f"{'':6} {'samples/s':>10} {'peak MB':>9} {'weights MB':>10} {'GFLOP/sample':>13}{mfu_column}")
    timed = rounds[args.warmup :]
    for name, step in (("off", off), ("on", on)):
        seconds = sum(timing.seconds[name])
        flops = sum(costs[name].flops(r, rounds[0], step.stops_per_rollout) for r in timed)
        memory = timing.cuda_peak[name] if device.type == "cuda" else costs[name].peak_bytes
        line = (
            f"{name:6} {timing.samples[name] / seconds:10.3f} {memory / 2**20:9.1f} "
            f"{weight_bytes(step) / 2**20:10.1f} {flops / timing.samples[name] / 1e9:13.2f}"
        )
        if peak:
            line += f" {flops / seconds / (peak * 1e12):6.1%}"
        report(line)
    if peak:
        report(f"rollout (UNet) MFU of `on`: {rollout_mfu(on, rounds[0], costs['on'], device, peak):.1%}")
    ratios = timing.ratios
    low, middle, high = min(ratios), statistics.median(ratios), max(ratios)
    if device.type == "cpu":
        share = {name: timing.no_grad_unet[name] / sum(timing.seconds[name]) for name in ("off", "on")}
        report(
            f"no-grad UNet calls: off {share['off']:.1%} of its time (its rollout), on {share['on']:.1%}; "
            f"a step that keeps off's rollout is at most {1 / share['off']:.2f}× as fast as off"
        )
    void = "" if agree else "  (void: `on` computes another gradient, so its speed is not a speed-up)"
    spread = f"min {low:.3f}  median {middle:.3f}  max {high:.3f}"
    report(f"ratio on/off over {len(ratios)} rounds: {spread}{void}")
    del off, on
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return timing


# -- entry point ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=WORLDS, default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resolution", type=int, default=512, help="sd15 only: image side in pixels")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6, help="timed rounds (each runs every path once)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--num-inference-steps", type=int, default=30, help="DDIM steps T (ReNeg: 30)")
    parser.add_argument(
        "--stop-steps", type=int, default=10, help="K: stops uniform over the last K (ReNeg: 10)"
    )
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--clock",
        choices=tuple(CLOCKS),
        default="wall",
        help="wall: elapsed time; cpu: this process's CPU time (with --threads 1, immune to other load on a "
        "shared machine; CPU only)",
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="device peak for MFU if not in the table"
    )
    renegx_switches = parser.add_argument_group(
        "renegx switches (ReNegModule's hyper-parameters of the same name)"
    )
    renegx_switches.add_argument("--frozen-dtype", choices=("float32", "bfloat16"), default="float32")
    renegx_switches.add_argument("--attention", choices=("sdpa", "classic"), default="sdpa")
    renegx_switches.add_argument("--channels-last", action="store_true")
    renegx_switches.add_argument("--gradient-checkpointing", action="store_true")
    renegx_switches.add_argument("--compile", action="store_true")
    renegx_switches.add_argument("--decode-at-reward-size", action="store_true")
    renegx_switches.add_argument("--stops-per-rollout", type=int, default=1)
    parser.add_argument(
        "--ablate",
        default="",
        help="comma-separated optimisations to measure on against off, or 'all': cache, positive_no_grad, "
        "bf16, sdpa, channels_last, checkpointing, decode_at_reward_size, multi_stop, compile",
    )
    parser.add_argument(
        "--multi-stop", type=int, default=4, help="stops per rollout in the multi_stop ablation"
    )
    args = parser.parse_args(argv)
    args.multi_stop = max(args.multi_stop, args.stops_per_rollout)
    return args


def main(argv: list[str] | None = None, report=print) -> float:
    """Run the benchmark; returns the median speed-up of renegx over the naive reference."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.clock == "cpu" and device.type != "cpu":
        raise SystemExit("--clock cpu measures CPU time: use it with --device cpu only")
    switches = {
        "frozen_dtype": args.frozen_dtype,
        "attention": args.attention,
        "channels_last": args.channels_last,
        "gradient_checkpointing": args.gradient_checkpointing,
        "compile": args.compile,
        "decode_at_reward_size": args.decode_at_reward_size,
        "stops_per_rollout": args.stops_per_rollout,
    }
    world = build_world(args.model, resolution=args.resolution)
    table = comparisons(world, args, device, switches)
    wanted = list(table)[1:] if args.ablate == "all" else [n for n in args.ablate.split(",") if n]
    unknown = [n for n in wanted if n not in table or n == "naive"]
    if unknown:
        raise SystemExit(f"unknown optimisation(s) {', '.join(unknown)}; known: {', '.join(list(table)[1:])}")

    report(f"device: {device_name(device)}; torch {torch.__version__}")
    report(f"model: {world.describe()}")
    report(
        f"config: batch {args.batch_size}, DDIM {args.num_inference_steps} steps, stop uniform over the last "
        f"{args.stop_steps}, w {args.guidance_scale}, {args.steps} timed rounds after {args.warmup} warm-up, "
        f"{args.clock} clock"
    )
    report("renegx switches: " + " ".join(f"{k}={v}" for k, v in switches.items()))
    rounds = draw_rounds(world, args, device)
    headline = run_comparison(table["naive"], rounds, args, device, report)
    for name in wanted:
        run_comparison(table[name], rounds, args, device, report)
    speedup = statistics.median(headline.ratios)
    report(f"speedup_vs_naive: {speedup:.3f}")
    return speedup


if __name__ == "__main__":
    main()
