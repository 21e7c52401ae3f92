"""Logging: CSV metrics (reward per component, skipped steps), the x̂0 grid of null vs learned, wandb offline,
progress bars and the resolved config beside every run."""

import csv
from pathlib import Path

import pytest
import torch
from builders import quiet_trainer
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from renegx.cli import train_main
from renegx.cli.fit import RenegxCLI
from renegx.configs import path_of
from renegx.evaluate.grids import labelled_grid
from renegx.rewards import ClipScore, RewardMixture
from renegx.train.callbacks import KEY, ImageLogger
from renegx.train.data import PromptDataModule
from renegx.train.module import ReNegModule

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


class ImageCSVLogger(CSVLogger):
    """A CSV logger that also takes images, like wandb's."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.images = []

    def log_image(self, key, images, step=None, **kwargs):
        self.images.append((key, images, step, kwargs))


def test_metrics_per_reward_component_and_image_grids(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green star\na dog\na cat\n")
    reward = RewardMixture([ClipScore(model="tiny"), ClipScore(model="tiny")], weights=[1.0, 0.5])
    module = ReNegModule(reward=reward, model="tiny", num_inference_steps=2, stop_steps=1)
    logger = ImageCSVLogger(tmp_path, name="run")
    images = ImageLogger(every_n_steps=2, num_prompts=2)
    trainer = quiet_trainer(
        max_steps=3,
        logger=logger,
        callbacks=[images],
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        enable_checkpointing=False,
    )
    trainer.fit(module, PromptDataModule(str(prompts), val_size=2, batch_size=2))

    with open(Path(logger.log_dir) / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    columns = set(rows[0])
    assert {"train/reward/clip", "train/reward/clip_2", "train/reward_mean", "train/loss"} <= columns
    assert {"train/skipped_steps", "train/grad_norm", "train/lr"} <= columns
    logged = [float(r["train/reward/clip"]) for r in rows if r["train/reward/clip"]]
    assert len(logged) == 3 and all(torch.isfinite(torch.tensor(logged)))

    pngs = sorted(p.name for p in (Path(logger.log_dir) / "images").iterdir())
    assert pngs == ["x0-step0000002.png", "x0-step0000003.png"]  # every 2 steps, and at the end
    grid = Image.open(Path(logger.log_dir) / "images" / pngs[-1])
    # Rows null and learned, one column per prompt (64-px pictures enlarged twice), labels in the margins.
    assert (
        grid.size == labelled_grid([torch.zeros(2, 3, 64, 64)] * 2, ["null", "learned"], ["p\ns"] * 2, 2).size
    )
    assert [(key, step) for key, _, step, _ in logger.images] == [(KEY, 2), (KEY, 3)]
    caption = logger.images[-1][3]["caption"][0]
    assert caption.startswith("'a ") and caption.count("null") == 2 and caption.count("learned") == 2


def test_defaults_log_to_csv_with_progress_bars(tmp_path):
    cli = RenegxCLI(
        args=[
            "--config",
            str(path_of("train/tiny")),
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
        ],
        run=False,
    )
    assert type(cli.trainer.logger).__name__ == "CSVLogger"
    assert cli.trainer.progress_bar_callback is not None
    assert any(isinstance(c, ImageLogger) for c in cli.trainer.callbacks)


@pytest.mark.slow
def test_wandb_offline_run_gets_metrics_images_and_the_config(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    code = train_main(
        [
            *("fit", "--config", str(path_of("train/tiny")), "--trainer.max_steps", "2"),
            *("--trainer.logger", "lightning.pytorch.loggers.WandbLogger"),
            *("--trainer.logger.init_args.offline", "true", "--trainer.logger.init_args.project", "renegx"),
            *("--trainer.logger.init_args.save_dir", str(tmp_path)),
            *("--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false"),
        ]
    )
    assert code == 0
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("files/media/images/x0/*.png"))  # the x̂0 grid
    assert list(runs[0].glob("run-*.wandb"))  # metrics, synced later with `wandb sync`
    assert list(tmp_path.rglob("config.yaml"))  # the resolved config beside the run


def test_image_logger_draws_null_and_learned_in_one_unet_batch(tmp_path):
    module = ReNegModule(reward=ClipScore(model="tiny"), model="tiny", num_inference_steps=3, stop_steps=1)
    calls = []
    module.backbone.unet.register_forward_pre_hook(lambda _, args: calls.append(args[0].shape[0]))
    trainer = quiet_trainer(logger=False)
    images = ImageLogger(num_prompts=1, dirpath=str(tmp_path))
    images.folder = tmp_path
    path = images.log_grid(trainer, module)
    # T calls, each on [null, learned] × [negative branch, prompt branch] of the one prompt.
    assert calls == [4, 4, 4]
    assert path is not None and path.is_file()
