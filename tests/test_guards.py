"""The non-finite guard in a real Lightning fit: a NaN/Inf reward or gradient skips that update (counted and
logged), the embedding never becomes non-finite, and too many bad steps in a row stop the run with a clear
error and a good checkpoint."""

import csv

import lightning as L
import pytest
import torch
from builders import quiet_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from renegx.rewards import Reward
from renegx.train.checkpoint_io import AtomicCheckpointIO
from renegx.train.data import PromptDataModule
from renegx.train.guards import NonFiniteGuard, NonFiniteTrainingError
from renegx.train.module import ReNegModule


class _NaNGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores):
        return scores.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


class ScriptedReward(Reward):
    """Mean brightness; at the listed training calls (0-based) a NaN score or a finite score whose gradient
    is NaN (`inf_calls`: an Inf score)."""

    name = "scripted"

    def __init__(self, nan_calls=(), inf_calls=(), nan_grad_calls=()):
        super().__init__()
        self.nan_calls, self.inf_calls, self.nan_grad_calls = (
            set(nan_calls),
            set(inf_calls),
            set(nan_grad_calls),
        )
        self.calls = 0
        self.freeze()

    def score(self, images, prompts):
        scores = images.mean((1, 2, 3))
        if not torch.is_grad_enabled():
            return scores
        call, self.calls = self.calls, self.calls + 1
        if call in self.nan_calls:
            return scores * float("nan")
        if call in self.inf_calls:
            return scores + float("inf")
        if call in self.nan_grad_calls:
            return _NaNGradient.apply(scores)
        return scores


class StepRecorder(L.Callback):
    """The embedding before and after every step, and whether it stayed finite."""

    def __init__(self):
        self.before, self.after = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before.append(pl_module.negative_embeds.detach().clone())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after.append(pl_module.negative_embeds.detach().clone())

    def updated(self) -> list[bool]:
        return [not torch.equal(b, a) for b, a in zip(self.before, self.after, strict=True)]


pytestmark = pytest.mark.usefixtures("one_thread")


def _fit(tmp_path, reward, max_steps, max_bad_steps=3):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green star\na dog\na cat\n")
    module = ReNegModule(
        reward=reward, model="tiny", num_inference_steps=2, stop_steps=1, max_bad_steps=max_bad_steps
    )
    recorder = StepRecorder()
    trainer = quiet_trainer(
        max_steps=max_steps,
        logger=CSVLogger(tmp_path, name="run"),
        callbacks=[recorder, ModelCheckpoint(every_n_train_steps=1, save_last=True)],
        plugins=[AtomicCheckpointIO()],
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    error = None
    try:
        trainer.fit(module, PromptDataModule(str(prompts), val_size=1, batch_size=2))
    except NonFiniteTrainingError as err:
        error = err
    return module, trainer, recorder, error


def _logged(trainer, key):
    with open(f"{trainer.logger.log_dir}/metrics.csv") as file:
        return [float(row[key]) for row in csv.DictReader(file) if row.get(key)]


def test_bad_rewards_and_gradients_skip_their_update_and_nothing_else(tmp_path):
    reward = ScriptedReward(nan_calls={1}, inf_calls={2}, nan_grad_calls={4})
    module, trainer, recorder, error = _fit(tmp_path, reward, max_steps=6)
    assert error is None and trainer.global_step == 6
    assert recorder.updated() == [True, False, False, True, False, True]
    assert all(torch.isfinite(e).all() for e in recorder.after)
    assert module.guard.skipped == 3 and module.guard.in_a_row == 0
    adam = trainer.optimizers[0].state[module.negative_embeds]
    assert adam["step"].item() == 3  # the optimizer saw only the good steps
    assert torch.isfinite(adam["exp_avg"]).all() and torch.isfinite(adam["exp_avg_sq"]).all()
    assert _logged(trainer, "train/skipped_steps")[-1] == 3


def test_too_many_bad_steps_in_a_row_stop_with_a_good_checkpoint(tmp_path):
    module, trainer, recorder, error = _fit(tmp_path, ScriptedReward(nan_calls={1, 2, 3}), max_steps=20)
    assert error is not None and trainer.global_step == 4
    message = str(error)
    assert len(message.splitlines()) == 1
    assert message.startswith(
        "3 training steps in a row had a non-finite reward, loss or gradient (up to step 4)"
    )
    assert "lower model.lr" in message
    checkpoint_path = f"{trainer.checkpoint_callback.dirpath}/last.ckpt"
    assert checkpoint_path in message
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    saved = checkpoint["state_dict"]["negative_embeds"]
    assert checkpoint["global_step"] == 4 and torch.isfinite(saved).all()
    assert torch.equal(saved, recorder.after[0])  # the state from before the bad streak
    assert checkpoint["renegx"]["guard"] == {"skipped": 3, "in_a_row": 3}


def test_guard_counts():
    parameter = torch.nn.Parameter(torch.zeros(3))
    guard = NonFiniteGuard(max_bad_steps=2)
    parameter.grad = torch.tensor([1.0, float("inf"), 0.0])
    assert not guard.admit(parameter) and parameter.grad is None
    parameter.grad = torch.ones(3)
    assert guard.admit(parameter) and guard.in_a_row == 0 and guard.skipped == 1
    for _ in range(2):
        parameter.grad = torch.full((3,), float("nan"))
        guard.admit(parameter)
    assert guard.exhausted and guard.state_dict() == {"skipped": 3, "in_a_row": 2}
