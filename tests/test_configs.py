"""Every config parses and type-checks; configs that need no download also instantiate."""

from pathlib import Path

import pytest

from renegx.cli import RenegxCLI, parse_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
OFFLINE = {"tiny.yaml", "default.yaml"}


def test_there_are_configs():
    assert {"tiny.yaml", "default.yaml", "sd15_clip.yaml"} <= {c.name for c in CONFIGS}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_starts_with_its_command_and_parses(config):
    first = config.read_text().splitlines()[0]
    assert first.startswith("# python train.py"), first
    parsed = parse_config(config)
    assert parsed.model.reward.class_path.startswith("renegx.rewards.")
    assert parsed.model.guidance_scale > 1


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.name in OFFLINE], ids=lambda p: p.name)
def test_offline_config_instantiates(config, tmp_path):
    cli = RenegxCLI(
        args=["--config", str(config), "--trainer.logger.init_args.save_dir", str(tmp_path)], run=False
    )
    assert cli.model.negative_embeds.requires_grad
    assert cli.trainer.max_steps > 0
