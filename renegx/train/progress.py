"""The training progress bar: optimizer steps out of the run's total, and the logged metrics by full name.

Lightning's default bars count batches of the current epoch against that epoch's length, which a resumed run
or a step-budgeted run (`max_epochs: -1`) shows as `300/249` and `Epoch 0/-2`, and they squeeze the metrics,
the logger's version among them, into what is left of one line. This bar counts `trainer.global_step` against
`trainer.estimated_stepping_batches` (`max_steps` when set), and writes the metrics as a line of their own
above it every `log_every_n_steps` steps and after each validation, so no name is cut.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, convert_inf


def metrics_line(step: int, total: int | None, metrics: dict[str, Any]) -> str:
    """`step 10/250: train/loss 0.1234 · train/reward_mean 0.5` (numbers to 4 significant digits)."""
    shown = " · ".join(f"{name} {_number(value)}" for name, value in sorted(metrics.items()))
    return f"step {step}/{'?' if total is None else total}: {shown}"


def _number(value: Any) -> str:
    value = value.item() if hasattr(value, "item") else value
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class StepProgressBar(TQDMProgressBar):
    """A tqdm bar of optimizer steps, `training 12/250 [00:03<01:00, 4.0 steps/s]`, metric lines above it."""

    BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]"

    def __init__(self, refresh_rate: int = 1, process_position: int = 0):
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=False)
        self._written_at = -1

    @property
    def train_description(self) -> str:
        return "training"

    def init_train_tqdm(self) -> Tqdm:
        bar = super().init_train_tqdm()
        bar.unit = "steps"
        return bar

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        """What the module logs with `prog_bar=True`, by full name; not the logger's version."""
        return dict(trainer.progress_bar_metrics)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.train_progress_bar = self.init_train_tqdm()
        bar = self.train_progress_bar
        bar.total = convert_inf(trainer.estimated_stepping_batches)
        bar.initial = bar.n = trainer.global_step  # a resumed run goes on from its step
        bar.refresh()

    def on_train_epoch_start(self, trainer: Trainer, *_: Any) -> None:
        """One bar for the whole run: an epoch does not restart it."""

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *_: Any) -> None:
        bar, step = self.train_progress_bar, trainer.global_step
        if bar.disable or step == bar.n:  # an accumulating batch: no optimizer step yet
            return
        bar.n = step
        if self._should_update(step, bar.total):
            bar.refresh()
        if step % max(trainer.log_every_n_steps, 1) == 0 or step == bar.total:
            self._write_metrics(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The metrics are written by step, not by epoch."""

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._written_at = -1  # the validation metrics are new
        super().on_validation_end(trainer, pl_module)
        if self._train_progress_bar is not None and trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._write_metrics(trainer, pl_module)

    def _write_metrics(self, trainer: Trainer, pl_module: LightningModule) -> None:
        bar, metrics = self.train_progress_bar, self.get_metrics(trainer, pl_module)
        if bar.disable:  # another rank's bar: tqdm.write would print all the same
            return
        if metrics and self._written_at != trainer.global_step:
            self._written_at = trainer.global_step
            bar.write(metrics_line(trainer.global_step, bar.total, metrics))
