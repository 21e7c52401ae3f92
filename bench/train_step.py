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
import contextlib
import copy
import platform
import statistics
import time
import weakref
from dataclasses import dataclass
from unittest import mock

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop, sdpa_flop

import renegx.module
from bench.clocks import no_grad_seconds
from bench.models import WORLDS, World, build_world
from renegx.backbone import Backbone
from renegx.guidance import rollout_to
from renegx.module import ReNegModule

LR = 5e-3
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
# Dense bf16 tensor-core peaks (TFLOP/s) by device-name fragment, for model-FLOP utilisation.
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "4090": 165.0}


# -- the two paths -------------------------------------------------------------------------------------------
@dataclass
class Round:
    """One round's inputs, the same for every path: B prompts, x_T `(B, C, h, w)`, stop indices as drawn."""

    prompts: list[str]
    latents: torch.Tensor
    stops: list[int]


class NaiveStep:
    """ReNeg's training step written plainly, with two of renegx's savings as switches for the ablation."""

    def __init__(
        self, world: World, args, device, cache_prompts: bool = False, positive_no_grad: bool = False
    ):
        from diffusers import DDIMScheduler

        parts = copy.deepcopy(world.components)
        self.unet, self.vae, self.text_encoder = (
            parts[k].to(device) for k in ("unet", "vae", "text_encoder")
        )
        self.tokenizer, self.reward = parts["tokenizer"], copy.deepcopy(world.reward).to(device)
        for model in (self.unet, self.vae, self.text_encoder, self.reward):
            model.requires_grad_(False).eval()
        self.scheduler = DDIMScheduler.from_config(parts["scheduler"].config)
        self.scheduler.set_timesteps(args.num_inference_steps)
        self.guidance_scale, self.device = args.guidance_scale, device
        self.cache_prompts, self.positive_no_grad, self.cache = cache_prompts, positive_no_grad, {}
        self.negative = torch.nn.Parameter(self.encode([""]).clone())
        self.optimizer = torch.optim.AdamW([self.negative], lr=LR)
        if cache_prompts:
            self.encode(world.prompts)  # steady state: every prompt seen before
        self.stops_per_rollout, self.modules = 1, (self.unet, self.vae, self.text_encoder, self.reward)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        if self.cache_prompts and all(p in self.cache for p in prompts):
            return torch.stack([self.cache[p] for p in prompts])
        length = self.tokenizer.model_max_length
        tokens = self.tokenizer(
            prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        )
        ids = tokens.input_ids.to(self.device)
        with torch.no_grad():
            embeds = self.text_encoder(ids)[0]
        if self.cache_prompts:
            self.cache.update(zip(prompts, embeds, strict=True))
        return embeds

    def cfg_eps(self, x, t, negative, prompt_embeds):
        eps_n, eps_c = self.unet(torch.cat([x, x]), t, torch.cat([negative, prompt_embeds])).sample.chunk(2)
        return eps_n + self.guidance_scale * (eps_c - eps_n)

    def rollout(self, prompt_embeds, latents, stop: int) -> torch.Tensor:
        negative, x = self.negative.detach().expand(len(latents), -1, -1), latents
        with torch.no_grad():
            for t in self.scheduler.timesteps[:stop]:
                x = self.scheduler.step(self.cfg_eps(x, t, negative, prompt_embeds), t, x).prev_sample
        return x

    def loss(self, rnd: Round) -> torch.Tensor:
        stop, prompt_embeds = rnd.stops[0], self.encode(rnd.prompts)
        x_t = self.rollout(prompt_embeds, rnd.latents, stop)
        t, negative = self.scheduler.timesteps[stop], self.negative.expand(len(x_t), -1, -1)
        if self.positive_no_grad:
            with torch.no_grad():
                eps_c = self.unet(x_t, t, prompt_embeds).sample
            eps_n = self.unet(x_t, t, negative).sample
            eps = eps_n + self.guidance_scale * (eps_c - eps_n)
        else:
            eps = self.cfg_eps(x_t, t, negative, prompt_embeds)
        x0 = self.scheduler.step(eps, t, x_t).pred_original_sample
        images = ((self.vae.decode(x0 / self.vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1)
        return -self.reward(images, rnd.prompts).mean()

    def rollout_step(self, rnd: Round):
        """A function taking one no-grad CFG rollout step from `rnd.latents` (prompts encoded beforehand)."""
        prompt_embeds = self.encode(rnd.prompts)
        return lambda: self.rollout(prompt_embeds, rnd.latents, 1)


class RenegxStep:
    """`ReNegModule.step_loss` over copies of the world's components, with the given module switches."""

    def __init__(self, world: World, args, device, **switches):
        def prebuilt(*_, **__) -> Backbone:
            return Backbone(copy.deepcopy(world.components), world.name)

        with mock.patch.object(renegx.module, "load_family_backbone", prebuilt):
            self.module = ReNegModule(
                reward=copy.deepcopy(world.reward),
                model=world.name,
                guidance_scale=args.guidance_scale,
                num_inference_steps=args.num_inference_steps,
                stop_steps=args.stop_steps,
                lr=LR,
                **switches,
            ).to(device)
        self.module.backbone.encode_prompts(world.prompts)  # steady state: every prompt seen before
        self.optimizer = torch.optim.AdamW([self.module.negative_embeds], lr=LR)
        self.stops_per_rollout = self.module.hparams.stops_per_rollout
        self.negative = self.module.negative_embeds
        backbone = self.module.backbone
        self.unet = backbone.unet
        self.modules = (backbone.unet, backbone.vae, backbone.text_encoder, self.module.reward)

    def loss(self, rnd: Round) -> torch.Tensor:
        stops = sorted(rnd.stops[: self.stops_per_rollout])
        return self.module.step_loss(rnd.prompts, rnd.latents, stops)[0]

    def rollout_step(self, rnd: Round):
        """A function taking one no-grad CFG rollout step from `rnd.latents` (prompts encoded beforehand)."""
        module = self.module
        negative, prompt_embeds = module.negative_embeds.detach(), module.backbone.encode_prompts(rnd.prompts)
        unet, w = module.backbone.unet, module.hparams.guidance_scale
        return lambda: rollout_to(unet, module.schedule, rnd.latents, negative, prompt_embeds, w, 1)

    @contextlib.contextmanager
    def without_checkpointing(self):
        """Model FLOPs exclude the recomputation that checkpointing adds."""
        models = (self.module.backbone.unet, self.module.backbone.vae)
        if not self.module.hparams.gradient_checkpointing:
            yield
            return
        for model in models:
            model.disable_gradient_checkpointing()
        try:
            yield
        finally:
            for model in models:
                model.enable_gradient_checkpointing()


def train_step(step, rnd: Round) -> None:
    step.loss(rnd).backward()
    step.optimizer.step()
    step.optimizer.zero_grad(set_to_none=True)


def samples(step, rnd: Round) -> int:
    return len(rnd.prompts) * step.stops_per_rollout


def weight_bytes(step) -> int:
    return sum(t.numel() * t.element_size() for m in step.modules for t in [*m.parameters(), *m.buffers()])


# -- meters --------------------------------------------------------------------------------------------------
class AllocatedPeak(TorchDispatchMode):
    """Peak bytes held by the tensors allocated inside the block (weights and older tensors not counted)."""

    def __init__(self):
        super().__init__()
        self.current = self.peak = 0
        self.live: dict[int, int] = {}

    def _release(self, pointer: int) -> None:
        self.current -= self.live.pop(pointer, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if _dense(t)}
        for tensor in tree_flatten(out)[0]:
            if not _dense(tensor):
                continue
            storage = tensor.untyped_storage()
            pointer, size = storage.data_ptr(), storage.nbytes()
            if size and pointer not in inputs and pointer not in self.live:
                self.live[pointer] = size
                self.current += size
                weakref.finalize(storage, self._release, pointer)
        self.peak = max(self.peak, self.current)
        return out


def _dense(value) -> bool:
    return isinstance(value, torch.Tensor) and value.layout == torch.strided and value.device.type != "meta"


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter, taught CPU's fused attention kernels (it knows the CUDA ones)."""
    aten = torch.ops.aten
    cpu_attention = {
        aten._scaled_dot_product_flash_attention_for_cpu: sdpa_flop.__wrapped__,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: sdpa_backward_flop.__wrapped__,
    }
    return FlopCounterMode(display=False, custom_mapping=cpu_attention)


@dataclass
class Cost:
    peak_bytes: int  # tensors allocated by one step (eager), at their peak
    step_flops: float  # model FLOPs of the measured round's step (no recomputation)
    rollout_step_flops: float  # one no-grad CFG UNet call on the batch: what each extra rollout step adds

    def flops(self, rnd: Round, measured: Round, stops_per_rollout: int) -> float:
        """FLOPs of `rnd`'s step: the measured step, shifted by the difference in rollout length."""
        longest = max(rnd.stops[:stops_per_rollout])
        return self.step_flops + (longest - max(measured.stops[:stops_per_rollout])) * self.rollout_step_flops


def measure(step, rnd: Round) -> Cost:
    """Peak memory and FLOPs of one eager step (`torch.compile` off for the count), outside the timing."""
    with torch.compiler.set_stance("force_eager"):
        peak = AllocatedPeak()
        with peak:
            train_step(step, rnd)
        no_recompute = getattr(step, "without_checkpointing", contextlib.nullcontext)
        with no_recompute(), flop_counter() as step_flops:
            step.loss(rnd).backward()
        step.optimizer.zero_grad(set_to_none=True)
        rollout_step = step.rollout_step(rnd)
        with flop_counter() as rollout_flops:
            rollout_step()
    return Cost(peak.peak, step_flops.get_total_flops(), rollout_flops.get_total_flops())


def loss_and_grad(step, rnd: Round) -> tuple[float, torch.Tensor]:
    step.optimizer.zero_grad(set_to_none=True)
    loss = step.loss(rnd)
    loss.backward()
    grad = step.negative.grad.detach().float().clone()
    step.optimizer.zero_grad(set_to_none=True)
    return loss.item(), grad


def agreement(off, on, rnd: Round, exact: bool = True) -> tuple[str, bool]:
    """How far `on`'s loss and gradient are from `off`'s for the same inputs and the same embedding, and
    whether they agree: `exact` switches should agree up to float rounding (relative gradient error ≤ 1e-3).
    """
    with torch.no_grad():
        on.negative.copy_(off.negative)
    loss_off, grad_off = loss_and_grad(off, rnd)
    loss_on, grad_on = loss_and_grad(on, rnd)
    error = (grad_on - grad_off).norm() / grad_off.norm().clamp_min(1e-30)
    cosine = F.cosine_similarity(grad_on.flatten(), grad_off.flatten(), dim=0)
    agree = not exact or bool(error <= 1e-3)
    flag = "" if agree else "  <-- MISMATCH: not the same gradient"
    text = (
        f"|Δloss| {abs(loss_on - loss_off):.2e} (loss {loss_off:.4f}), gradient: relative error "
        f"{error:.2e}, cosine {cosine:.6f}{flag}"
    )
    return text, agree


# -- timing --------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
            _sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            with no_grad_seconds(paths[name].unet, clock) as in_unet:
                start = clock()
                train_step(paths[name], rnd)
                _sync(device)
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


def rollout_mfu(step, rnd: Round, cost: Cost, device, peak_tflops: float, repeats: int = 10) -> float:
    """Model-FLOP utilisation of no-grad CFG rollout steps alone (the UNet work, ~75% of a step's FLOPs)."""
    rollout_step = step.rollout_step(rnd)
    rollout_step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        rollout_step()
    _sync(device)
    return cost.rollout_step_flops * repeats / (time.perf_counter() - start) / (peak_tflops * 1e12)


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    """The device's dense bf16 peak for MFU: `given`, else looked up by GPU name; None on a CPU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return given or next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


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

    report(f"device: {_device_name(device)}; torch {torch.__version__}")
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
