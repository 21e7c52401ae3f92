"""The non-finite guard: a NaN/Inf reward, loss or gradient skips the update, never ruins the embedding.

The training step turns a non-finite reward into a non-finite gradient (`poisoned_loss`), so that under DDP
the all-reduced gradient is non-finite on every rank and every rank skips the same update without an extra
collective. Before the optimizer step `NonFiniteGuard.admit` looks at the (synchronised) gradient: a finite
one goes ahead; a non-finite one is dropped (`grad = None`: AdamW leaves the embedding and its moments as they
were) and counted. After `max_bad_steps` bad steps in a row the run stops with `NonFiniteTrainingError`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from renegx.errors import RenegxError


class NonFiniteTrainingError(RenegxError):
    """Too many training steps in a row had a non-finite reward, loss or gradient."""


def poisoned_loss(parameter: Tensor) -> Tensor:
    """A loss whose gradient is NaN everywhere in `parameter`: a bad micro-batch poisons its whole update."""
    return parameter.sum() * float("nan")


def poisoned_if_nonfinite(loss: Tensor, rewards: Tensor, parameter: Tensor) -> Tensor:
    """`loss` unchanged, with a gradient that turns NaN everywhere in `parameter` if any reward is NaN/Inf.

    Decided on the device (no host sync): the added term is `0 · Σ parameter` for finite rewards, which adds
    exactly zero to the value and to the gradient, and `NaN · Σ parameter` otherwise.
    """
    poison = torch.where(torch.isfinite(rewards.detach()).all(), 0.0, float("nan"))
    return loss + poison * parameter.sum()


class NonFiniteGuard:
    """Counts skipped updates: `skipped` in total, `in_a_row` since the last good one.

    Args:
        max_bad_steps: stop once this many optimizer steps in a row were skipped.
    """

    def __init__(self, max_bad_steps: int):
        self.max_bad_steps = max_bad_steps
        self.skipped = 0
        self.in_a_row = 0

    def admit(self, parameter: torch.nn.Parameter) -> bool:
        """True if `parameter.grad` is finite (or absent); else drop the gradient, count it, return False."""
        grad = parameter.grad
        if grad is None or bool(torch.isfinite(grad).all()):
            self.in_a_row = 0
            return True
        parameter.grad = None
        self.skipped += 1
        self.in_a_row += 1
        return False

    @property
    def exhausted(self) -> bool:
        return self.in_a_row >= self.max_bad_steps

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped, "in_a_row": self.in_a_row}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.skipped = int(state["skipped"])
        self.in_a_row = int(state["in_a_row"])


def stop_if_exhausted(trainer, guard: NonFiniteGuard, step: int) -> None:
    """After `max_bad_steps` skipped updates in a row: save the (still finite) state as `last.ckpt` in the
    run's checkpoint folder and stop with `NonFiniteTrainingError`; else nothing."""
    if not guard.exhausted:
        return
    callback = trainer.checkpoint_callback
    folder = Path(callback.dirpath) if callback is not None and callback.dirpath else None
    folder = folder or Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"
    path = folder / "last.ckpt"
    trainer.save_checkpoint(path)
    raise NonFiniteTrainingError(
        f"{guard.in_a_row} training steps in a row had a non-finite reward, loss or gradient "
        f"(up to step {step}); they were skipped, the finite state is saved in {path}; "
        "lower model.lr, or check the reward and the model weights"
    )
