"""Every evaluation config starts with its command and parses; the offline one runs end to end."""

import json

import pytest

from renegx.configs import path_of, shipped
from renegx.evaluate.run import judges_of, run_evaluation
from renegx.evaluate.settings import parse_evaluate_args, settings_from_args

CONFIGS = [path_of(name) for name in shipped("evaluate")]


def test_there_are_evaluation_configs():
    assert {"tiny.yaml", "toyworld.yaml", "sd15_hpsv2.yaml", "sd15_parti.yaml"} <= {c.name for c in CONFIGS}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_starts_with_its_command_and_parses(config):
    first = config.read_text().splitlines()[0]
    assert first.startswith(f"# renegx evaluate --config evaluate/{config.stem}"), first
    settings = settings_from_args(parse_evaluate_args(["--config", str(config)]))
    assert len(settings.negatives) >= 2
    assert settings.baseline_label() == "null"
    if config.name != "toyworld.yaml":  # the toy judges register when the toy world is importable
        assert judges_of(settings)


def test_tiny_config_runs_offline(tmp_path, one_thread):
    config = path_of("evaluate/tiny")
    settings = settings_from_args(parse_evaluate_args(["--config", str(config), "--out", str(tmp_path)]))
    assert run_evaluation(settings) == tmp_path / "report.html"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["benchmark"]["prompts"] == 4 and not report["benchmark"]["complete"]
    assert set(report["judges"]) == {"clip", "imagereward"}
