"""Meters for the speed benches: allocated-tensor peak, FLOP counts (CPU attention kernels taught), model-FLOP
utilisation, device names and peaks."""

from __future__ import annotations

import contextlib
import platform
import time
import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop, sdpa_flop

from bench.step_paths import Round, train_step

# Dense bf16 tensor-core peaks (TFLOP/s) by device-name fragment, for model-FLOP utilisation.
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "4090": 165.0}


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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rollout_mfu(step, rnd: Round, cost: Cost, device, peak_tflops: float, repeats: int = 10) -> float:
    """Model-FLOP utilisation of no-grad CFG rollout steps alone (the UNet work, ~75% of a step's FLOPs)."""
    rollout_step = step.rollout_step(rnd)
    rollout_step()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        rollout_step()
    sync(device)
    return cost.rollout_step_flops * repeats / (time.perf_counter() - start) / (peak_tflops * 1e12)


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    """The device's dense bf16 peak for MFU: `given`, else looked up by GPU name; None on a CPU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.getdevice_name(device)
    return given or next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.getdevice_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
