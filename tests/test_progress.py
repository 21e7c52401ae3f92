"""The training progress bar, rendered for a small run: optimizer steps out of `max_steps` (also on resume and
across epochs), and the metrics by their full names."""

from __future__ import annotations

import re

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from renegx.train.progress import StepProgressBar, metrics_line

LONG_NAME = "train/a_metric_name_long_enough_to_be_cut_by_a_one_line_bar"


class Small(LightningModule):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(2))

    def training_step(self, batch, batch_idx):
        loss = (self.weight * batch).sum() ** 2
        self.log_dict({LONG_NAME: 1.0, "train/loss": loss}, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)

    def train_dataloader(self):
        return DataLoader(torch.ones(3, 2), batch_size=1)  # 3 batches an epoch: a run crosses epochs


def _fit(tmp_path, capsys, max_steps: int, ckpt_path=None) -> tuple[list[tuple[int, int]], str]:
    """(n, total) of every frame of the bar, and the whole output."""
    trainer = Trainer(
        max_steps=max_steps,
        callbacks=[StepProgressBar()],
        logger=CSVLogger(tmp_path),
        default_root_dir=tmp_path,
        log_every_n_steps=2,
        enable_model_summary=False,
    )
    trainer.fit(Small(), ckpt_path=ckpt_path)
    out = capsys.readouterr().out
    frames = [re.search(r"(\d+)/(\d+) \[", f) for f in re.split(r"[\r\n]", out) if f.startswith("training")]
    return [(int(f[1]), int(f[2])) for f in frames if f], out  # not the frame drawn before the total is set


def test_the_bar_counts_steps_out_of_max_steps_and_names_every_metric(tmp_path, capsys):
    counts, out = _fit(tmp_path, capsys, max_steps=5)
    assert counts[-1] == (5, 5) and all(n <= total == 5 for n, total in counts)
    assert "Epoch" not in out and "v_num" not in out
    lines = re.split(r"[\r\n]", out)
    assert any(line.startswith(f"step 2/5: {LONG_NAME} 1 · train/loss ") for line in lines)
    assert any(line.startswith("step 5/5: ") for line in lines)

    checkpoint = next((tmp_path / "lightning_logs").rglob("*.ckpt"))
    counts, out = _fit(tmp_path, capsys, max_steps=8, ckpt_path=checkpoint)
    assert counts[0] == (5, 8) and counts[-1] == (8, 8)  # a resumed run goes on from its step
    assert all(n <= total == 8 for n, total in counts)


def test_metrics_line_keeps_names_and_rounds_values():
    line = metrics_line(3, None, {"val/reward": torch.tensor(0.123456), "train/loss": 2.0, "n": 7})
    assert line == "step 3/?: n 7 · train/loss 2 · val/reward 0.1235"
