"""Every reward backend and a mixture train the tiny model end to end through train.py's entry point."""

from __future__ import annotations

import csv

import pytest

from renegx.cli import train_main
from renegx.configs import FOLDER
from renegx.negatives.embedding import NegativeEmbedding

CONFIGS = FOLDER / "train"
BACKENDS = {
    "tiny_hpsv2": "hpsv2",
    "tiny_imagereward": "imagereward",
    "tiny_pickscore": "pickscore",
    "tiny_aesthetic": "aesthetic",
    "tiny_mix": "mix",
}


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(BACKENDS))
def test_tiny_reward_config_trains_and_exports(config, tmp_path):
    code = train_main(
        [
            "fit",
            "--config",
            str(CONFIGS / f"{config}.yaml"),
            "--trainer.max_steps",
            "2",
            "--trainer.log_every_n_steps",
            "1",
            "--trainer.num_sanity_val_steps",
            "0",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
        ]
    )
    assert code == 0
    run = tmp_path / config / "version_0"
    embedding = NegativeEmbedding.load(run / "negative.safetensors", hidden_size=32)
    assert embedding.metadata["reward"] == BACKENDS[config] and embedding.metadata["train_steps"] == "2"
    with open(run / "metrics.csv") as metrics:
        rows = [row for row in csv.DictReader(metrics) if row.get("train/grad_norm")]
    assert rows and all(float(row["train/grad_norm"]) > 0 for row in rows)
