"""With `compile`: the compiled step's gradient must match the eager one's before the run trains on it.

torch.compile has been seen to return wrong gradients for these models (docs/benchmarks.md); the check fails
the run at its first step instead. In a fit it runs under the trainer's precision (the graph that trains),
and under DDP the lowest cosine of all ranks decides, so that every rank fails or goes on together (one
failing alone would leave the others waiting in the all-reduce).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from renegx.train.step import TrainingConfigError, initial_latents


def check_compiled_gradient(module, prompts: list[str], min_cosine: float = 0.99) -> None:
    """`module.step_loss`'s gradient on `prompts` (fixed noise, the last stop) compiled vs eager: a cosine
    below `min_cosine` (the lowest of all ranks) stops the run with a `TrainingConfigError`."""
    attached = module._trainer is not None
    latents = initial_latents(module.backbone, len(prompts), torch.Generator().manual_seed(0), module.device)
    grads = []
    for stance in ("force_eager", "default"):
        precision = (
            module.trainer.precision_plugin.train_step_context() if attached else contextlib.nullcontext()
        )
        with torch.compiler.set_stance(stance), torch.enable_grad(), precision:
            loss, _ = module.step_loss(prompts, latents, [len(module.schedule) - 1])
            grads.append(torch.autograd.grad(loss, module.trainable)[0].flatten().float())
    cosine = F.cosine_similarity(*grads, dim=0).detach()
    if attached and module.trainer.world_size > 1:
        cosine = module.all_gather(cosine).min()
    cosine = cosine.item()
    if not cosine >= min_cosine:
        raise TrainingConfigError(
            f"compile=True gives a gradient that differs from eager mode's (cosine {cosine:.3f} < "
            f"{min_cosine}) on this device and torch {torch.__version__}; train with compile=False"
        )
