"""The prepared GPU check (`make gpu-check`): does the shipped SD1.5 recipe fit, run fast, stay in lockstep?

    python -m bench.gpu_check                                   # SD1.5 shapes at 512², every visible GPU
    python -m bench.gpu_check --model tiny --device cpu --quick  # every code path on the tiny model, a CPU

No download: the SD1.5-shaped UNet, VAE and CLIP-L text encoder and the ViT-H-14 reward are built from their
public configs with random weights (`bench/models.py`). Sections, each skipped with its reason when it does
not fit in memory or in the time budget (8 minutes by default):

- `step`: the training step (`ReNegModule.step_loss`, backward, AdamW) under bf16 autocast, for the shipped
  configs' settings (bf16 frozen weights, gradient checkpointing), the earlier fp32 frozen weights, bf16
  without checkpointing, the shipped settings at twice the micro-batch and, time allowing, with `compile`:
  step time, samples/s, MFU of the whole step and of the no-grad rollout (FLOPs counted by torch's FLOP
  counter on one eager call), peak memory. The stop is the middle of the last K steps, the mean rollout
  length. `best` is the fastest that fits with a gradient within cosine 0.99 of the fp32 one.
- `cosine`: the shipped settings' gradient against fp32 weights without autocast, same inputs.
- `per-prompt`: `PerPromptTuner` on 16 prompts, batched against one at a time (shipped settings).
- `ddp`: a 20-step `train.py fit` of the tiny model with `strategy: ddp`, `bf16-mixed` on every visible GPU
  (NCCL), then a resume from its last checkpoint: the embedding must be identical on all ranks and the resumed
  run must start where the first stopped. It checks lockstep and resume, not speed (`bench/gpu_ddp.py`).
- `profile`: one step of the shipped settings under torch.profiler: the host's op time against the device's
  kernel time (a step whose kernels keep the GPU busy less than its wall time is bound by the host).

Prints one table and writes `gpu-check.json`. Without CUDA (and no `--device cpu`) it exits with one line.
The measuring sections stay in this one file with their runner because they share its world, rounds, budget
and report; the DDP section, which runs `train.py` in processes of its own, is `bench/gpu_ddp.py`.
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.gpu_ddp import ddp_check
from bench.meters import device_name, measure, peak_tflops, rollout_mfu, sync
from bench.models import World, build_world
from bench.step_paths import RenegxStep, Round, loss_and_grad, train_step
from renegx.files import atomic_write_json
from renegx.models.backbone import Backbone
from renegx.train.compile_check import check_compiled_gradient
from renegx.train.per_prompt import PerPromptSettings, PerPromptTuner
from renegx.train.step import StepRecipe

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
PAPER_SAMPLES = 4000 * 64  # the paper's run: 4000 optimizer steps of 64 prompts
SHIPPED = {"frozen_dtype": "bfloat16", "gradient_checkpointing": True}  # what configs/sd15_*.yaml set
# name → (module switches, micro-batch as a multiple of --batch-size); all under bf16 autocast (bf16-mixed).
# Twice the micro-batch (half the accumulation, the same global batch) gives each kernel launch more work.
SETTINGS = {
    "shipped": (SHIPPED, 1),
    "fp32 weights": ({"frozen_dtype": "float32"}, 1),
    "bf16, no checkpointing": ({"frozen_dtype": "bfloat16"}, 1),
    "shipped, 2x micro-batch": (SHIPPED, 2),
    "bf16 + compile": ({**SHIPPED, "compile": True}, 1),
}
MIN_COSINE = 0.99
SECTIONS = ("step", "cosine", "per-prompt", "ddp", "profile")


class NoCuda(SystemExit):
    pass


@dataclass
class Budget:
    """Seconds left of the run's allowance; a section that expects to need more is skipped."""

    seconds: float
    start: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)

    def allows(self, needed: float) -> bool:
        return self.left() >= needed


@dataclass
class Report:
    rows: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def add(self, section: str, setting: str, **values) -> dict:
        row = {"section": section, "setting": setting, **values}
        self.rows.append(row)
        return row

    def skip(self, section: str, why: str) -> None:
        self.skipped.append(f"{section}: {why}")


# -- the training step ---------------------------------------------------------------------------------------
def autocast(device: torch.device):
    """What Lightning's bf16-mixed wraps the step in."""
    return torch.autocast(device.type, dtype=torch.bfloat16)


def rounds(world: World, args, device: torch.device, count: int, batch: int | None = None) -> list[Round]:
    """`count` rounds of `batch` prompts (default `--batch-size`) with fresh noise, all stopping at the mean
    rollout length."""
    generator, batch = torch.Generator().manual_seed(0), batch or args.batch_size
    config = world.components["unet"].config
    shape = (batch, config.in_channels, config.sample_size, config.sample_size)
    stop = args.num_inference_steps - (args.stop_steps + 1) // 2
    out = []
    for index in range(count):
        prompts = [world.prompts[(index * batch + i) % len(world.prompts)] for i in range(batch)]
        out.append(Round(prompts, torch.randn(shape, generator=generator).to(device), [stop]))
    return out


def peak_memory_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def time_steps(step, rnds: list[Round], device, warmup: int) -> list[float]:
    seconds = []
    for index, rnd in enumerate(rnds):
        sync(device)
        start = time.perf_counter()
        with autocast(device):
            train_step(step, rnd)
        sync(device)
        if index >= warmup:
            seconds.append(time.perf_counter() - start)
    return seconds


def measure_setting(name: str, world: World, args, device, peak: float | None, report: Report) -> dict | None:
    """One row of the `step` section; None (and a skip) when it does not fit."""
    switches, times = SETTINGS[name]
    batch = args.batch_size * times
    release(device)
    try:
        step = RenegxStep(world, args, device, **switches)
        if switches.get("compile"):
            with autocast(device):
                check_compiled_gradient(step.module, world.prompts[:batch])
        rnds = rounds(world, args, device, args.warmup + args.steps, batch)
        seconds = time_steps(step, rnds, device, args.warmup)
        memory = peak_memory_gb(device)
        with autocast(device):
            cost = measure(step, rnds[0])
            rollout = rollout_mfu(step, rnds[0], cost, device, peak, repeats=args.steps) if peak else None
    except torch.OutOfMemoryError:
        report.skip("step", f"{name}: out of memory at micro-batch {batch}")
        return None
    except Exception as err:  # a setting that fails (e.g. compile) is reported, the others still run
        report.skip("step", f"{name}: {failure(err)}")
        return None
    finally:
        release(device)
    median = statistics.median(seconds)
    samples = batch / median
    row = report.add(
        "step",
        name,
        micro_batch=batch,
        step_s=median,
        samples_s=samples,
        mfu=cost.step_flops / median / (peak * 1e12) if peak else None,
        rollout_mfu=rollout,
        peak_gb=memory,
        step_tflop=cost.step_flops / 1e12,
        paper_gpu_hours=PAPER_SAMPLES / samples / 3600,
    )
    return row


def failure(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200] if lines else ''}"


def shipped_step(world: World, args, device) -> RenegxStep:
    return RenegxStep(world, args, device, **SHIPPED)


def gradient_cosine(world: World, args, device, report: Report) -> float:
    """The shipped settings' gradient against fp32 weights without autocast, on the same round."""
    rnd = rounds(world, args, device, 1)[0]
    reference = RenegxStep(world, args, device, frozen_dtype="float32")
    grad_fp32 = loss_and_grad(reference, rnd)[1]
    del reference
    release(device)
    step = shipped_step(world, args, device)
    with autocast(device):
        grad = loss_and_grad(step, rnd)[1]
    cosine = F.cosine_similarity(grad.flatten(), grad_fp32.flatten(), dim=0).item()
    report.add("cosine", "shipped vs fp32", cosine=cosine)
    return cosine


# -- per-prompt tuning ---------------------------------------------------------------------------------------
def per_prompt(world: World, args, device, report: Report) -> None:
    """16 prompts tuned batched against one at a time, shipped settings; time, prompts/s, peak memory."""
    backbone = Backbone(copy.deepcopy(world.components), world.name)
    backbone.configure_performance(frozen_dtype="bfloat16", gradient_checkpointing=True).to(device)
    reward = copy.deepcopy(world.reward).to(device)
    prompts = world.prompts[: args.per_prompt_prompts]
    with warnings.catch_warnings():  # one step per prompt: speed is measured here, not early stopping
        warnings.simplefilter("ignore", UserWarning)
        settings = PerPromptSettings(
            max_steps=1, patience=1, eval_seeds=(0,), batch_prompts=len(prompts), grad_chunk=args.batch_size
        )
    tuner = PerPromptTuner(
        backbone,
        reward,
        num_inference_steps=args.num_inference_steps,
        recipe=StepRecipe(stop_steps=args.stop_steps),
        settings=settings,
    )
    start = backbone.null_embedding()
    tuner.tune(prompts[:1], start)  # warm
    timings = {}
    for name, batches in (("batched", [prompts]), ("one at a time", [[p] for p in prompts])):
        release(device)
        sync(device)
        began = time.perf_counter()
        for batch in batches:
            tuner.tune(batch, start)
        sync(device)
        timings[name] = time.perf_counter() - began
        report.add(
            "per-prompt",
            f"{len(prompts)} prompts, {name}",
            step_s=timings[name],
            samples_s=len(prompts) / timings[name],
            peak_gb=peak_memory_gb(device),
        )
    report.add("per-prompt", "batched / one at a time", speedup=timings["one at a time"] / timings["batched"])


# -- the profiler's split ------------------------------------------------------------------------------------
def profile_split(world: World, args, device, report: Report) -> None:
    """Host op time against device kernel time of one shipped step (after a warm step)."""
    from torch.profiler import ProfilerActivity, profile

    step = shipped_step(world, args, device)
    rnd = rounds(world, args, device, 1)[0]
    with autocast(device):
        train_step(step, rnd)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    began = time.perf_counter()
    with profile(activities=activities) as prof, autocast(device):
        train_step(step, rnd)
        sync(device)
    wall = time.perf_counter() - began
    events = prof.key_averages()
    host = sum(event.self_cpu_time_total for event in events) / 1e6
    kernels = sum(getattr(event, "self_device_time_total", 0) for event in events) / 1e6
    launches = sum(event.count for event in events if event.key in ("cudaLaunchKernel", "cuLaunchKernel"))
    report.add(
        "profile",
        "shipped, one step",
        step_s=wall,
        host_op_s=host,
        device_kernel_s=kernels if device.type == "cuda" else None,
        device_busy=kernels / wall if device.type == "cuda" else None,
        kernel_launches=launches,
    )


# -- DDP through train.py ------------------------------------------------------------------------------------
LABELS = ("section", "setting")


def best_setting(measured: dict[str, dict], report: Report) -> dict | None:
    """The fastest measured setting; bf16 ones only if the shipped gradient agrees with fp32's."""
    cosine = next((row["cosine"] for row in report.rows if row["section"] == "cosine"), None)
    trusted = {
        name: row for name, row in measured.items() if name == "fp32 weights" or (cosine or 0) >= MIN_COSINE
    }
    return max(trusted.values(), key=lambda row: row["samples_s"]) if trusted else None


# -- the table -----------------------------------------------------------------------------------------------
COLUMNS = (
    ("section", "{}"),
    ("setting", "{}"),
    ("step_s", "{:.3f}"),
    ("samples_s", "{:.2f}"),
    ("mfu", "{:.1%}"),
    ("rollout_mfu", "{:.1%}"),
    ("peak_gb", "{:.2f}"),
)


def table(report: Report) -> str:
    header = [name for name, _ in COLUMNS] + ["other"]
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    shown = {name for name, _ in COLUMNS}
    for row in report.rows:
        cells = [fmt.format(row[key]) if row.get(key) is not None else "-" for key, fmt in COLUMNS]
        extra = ", ".join(f"{k}={_short(v)}" for k, v in row.items() if k not in shown)
        lines.append(" | ".join([*cells, extra or "-"]))
    lines += [f"skipped: {why}" for why in report.skipped]
    return "\n".join(lines)


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# -- entry point ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("sd15", "tiny"), default="sd15")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument(
        "--quick", action="store_true", help="a few steps of each section: the code paths only"
    )
    parser.add_argument("--batch-size", type=int, default=4, help="micro-batch of the training step")
    parser.add_argument(
        "--budget-s", type=float, default=480.0, help="sections that would overrun are skipped"
    )
    parser.add_argument(
        "--peak-tflops", type=float, help="the device's dense bf16 peak for MFU (default: by name)"
    )
    parser.add_argument("--out", default="gpu-check.json")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated, of {', '.join(SECTIONS)} (default: all)",
    )
    args = parser.parse_args(argv)
    args.sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    args.num_inference_steps, args.stop_steps, args.guidance_scale = (
        (4, 2, 7.5) if args.quick else (30, 10, 7.5)
    )
    args.warmup, args.steps = (0, 1) if args.quick else (2, 5)
    args.per_prompt_prompts = 2 if args.quick else 16
    args.ddp_steps, args.ddp_resume_steps = (2, 1) if args.quick else (20, 4)
    return args


def run(args, report: Report) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NoCuda(
            f"renegx gpu-check: no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda}); "
            "run it on a GPU machine, or try the code paths with --model tiny --device cpu --quick"
        )
    budget, peak = Budget(args.budget_s), peak_tflops(device, args.peak_tflops)
    world = build_world(args.model, prompt_pool=max(16, args.per_prompt_prompts))
    # build_world caches the reward's text features on the CPU; each copy of the reward that moves to the
    # device must encode its prompts there (the warm-up steps do).
    world.reward.text_features.clear()
    # Rough costs of each section on an H100 (seconds), used to skip what cannot finish in time.
    needs = {"step": 40, "compile": 150, "cosine": 30, "per-prompt": 120, "ddp": 60, "profile": 15}
    if args.quick:
        needs = dict.fromkeys(needs, 0)
    measured: dict[str, dict] = {}

    def step_setting(name: str) -> None:
        if budget.allows(needs["compile" if "compile" in name else "step"]):
            row = measure_setting(name, world, args, device, peak, report)
            if row is not None:
                measured[name] = row
        else:
            report.skip("step", f"{name}: over the time budget ({budget.left():.0f} s left)")

    eager = [name for name in SETTINGS if "compile" not in name] if "step" in args.sections else []
    for name in eager:
        step_setting(name)
    for section, call in (
        ("cosine", lambda: gradient_cosine(world, args, device, report)),
        ("per-prompt", lambda: per_prompt(world, args, device, report)),
        ("ddp", lambda: ddp_check(args, device, report)),
        ("profile", lambda: profile_split(world, args, device, report)),
    ):
        if section not in args.sections:
            continue
        if not budget.allows(needs[section]):
            report.skip(section, f"over the time budget ({budget.left():.0f} s left)")
            continue
        try:
            call()
        except torch.OutOfMemoryError:
            report.skip(section, "out of memory")
        except Exception as err:  # one failing section is reported; the others still run
            report.skip(section, failure(err))
        finally:
            release(device)
    # Compiling takes minutes: last, with whatever time the other sections left.
    for name in (n for n in SETTINGS if "compile" in n and "step" in args.sections):
        if args.quick or device.type != "cuda":
            report.skip("step", f"{name}: compiles for minutes; only on a GPU run without --quick")
        else:
            step_setting(name)
    best = best_setting(measured, report)
    if best is not None:
        report.add("step", f"best: {best['setting']}", **{k: v for k, v in best.items() if k not in LABELS})
    return {
        "device": device_name(device),
        "devices": torch.cuda.device_count() if device.type == "cuda" else 1,
        "torch": torch.__version__,
        "model": world.describe(),
        "batch_size": args.batch_size,
        "num_inference_steps": args.num_inference_steps,
        "stop_steps": args.stop_steps,
        "quick": args.quick,
        "peak_tflops": peak,
        "seconds": args.budget_s - budget.left(),
        "rows": report.rows,
        "skipped": report.skipped,
    }


def main(argv: list[str] | None = None, report=print) -> int:
    args = parse_args(argv)
    try:
        result = run(args, rows := Report())
    except NoCuda as err:
        print(str(err.code), file=sys.stderr)
        return 2
    report(table(rows))
    atomic_write_json(Path(args.out), result)
    report(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
