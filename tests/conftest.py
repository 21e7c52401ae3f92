"""Shared fixtures: tiny seeded components, offline everywhere."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import contextlib  # noqa: E402
import importlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

# Lightning first, so that its log handler binds the session's stderr, not one test's; the reward-parity
# environment (`make parity`) has no Lightning and needs none.
with contextlib.suppress(ModuleNotFoundError):
    importlib.import_module("lightning.pytorch")


@pytest.fixture(scope="session")
def tiny_backbone():
    from renegx.models import load_backbone

    return load_backbone("tiny")


@pytest.fixture(scope="session")
def tiny_backbone_v():
    from renegx.models import load_backbone

    return load_backbone("tiny", prediction_type="v_prediction")


@pytest.fixture(scope="module")
def tiny_pipe():
    """A tiny `StableDiffusionPipeline`, built without moving the global RNG."""
    from diffusers import StableDiffusionPipeline

    from renegx.tiny import tiny_sd_components

    with torch.random.fork_rng():
        components = tiny_sd_components()
    pipe = StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def one_thread():
    """One intra-op thread, like each rank of a DDP run (and much faster on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
