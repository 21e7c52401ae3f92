"""Where a benchmark's time goes: the wall time of a module's calls made without autograd."""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch


@contextmanager
def no_grad_seconds(module: torch.nn.Module, clock=time.perf_counter):
    """Yields a one-item list that accumulates the time (by `clock`) of `module`'s calls made under no_grad.

    On a GPU the time is of launching the work, not of running it: use it on the CPU.
    """
    total, began = [0.0], []

    def before(_module, _args):
        began.append(clock())

    def after(_module, _args, _output):
        start = began.pop()
        if not torch.is_grad_enabled():
            total[0] += clock() - start

    handles = [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        yield total
    finally:
        for handle in handles:
            handle.remove()
