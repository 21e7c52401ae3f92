"""Shared fixtures: tiny seeded components, offline everywhere."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_backbone():
    from renegx.backbone import load_backbone

    return load_backbone("tiny")


@pytest.fixture(scope="session")
def tiny_backbone_v():
    from renegx.backbone import load_backbone

    return load_backbone("tiny", prediction_type="v_prediction")
