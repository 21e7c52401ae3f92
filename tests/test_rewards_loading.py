"""Loading reward weights safely: pickle refusal, the one-time converter, missing files, and the
`renegx weights` helper (offline: what it would fetch; with files present: the offline config)."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch

from renegx.cli import convert_reward, weights
from renegx.cli.fit import parse_config
from renegx.configs import FOLDER
from renegx.rewards import RewardError
from renegx.rewards.loading import check_state_dict, fetch_file, load_state_dict

CONFIGS = FOLDER / "train"


class Opaque:
    """Not a tensor container: `torch.load(weights_only=True)` refuses to rebuild it."""

    def __init__(self):
        self.weight = torch.ones(2)


@pytest.fixture()
def pickled(tmp_path) -> Path:
    torch.save({"state_dict": {"a": torch.ones(2)}, "extra": Opaque()}, tmp_path / "opaque.pt")
    return tmp_path / "opaque.pt"


def test_plain_state_dicts_load_and_unwrap(tmp_path):
    torch.save({"state_dict": collections.OrderedDict(a=torch.ones(2))}, tmp_path / "nested.pt")
    torch.save({"b": torch.zeros(1)}, tmp_path / "flat.pth")
    assert list(load_state_dict(tmp_path / "nested.pt", "checkpoint")) == ["a"]
    assert list(load_state_dict(tmp_path / "flat.pth", "checkpoint")) == ["b"]


def test_pickle_needing_files_are_refused_with_the_converter_command(pickled):
    with pytest.raises(RewardError) as error:
        load_state_dict(pickled, "HPSv2 checkpoint")
    message = str(error.value)
    assert "needs full unpickling" in message and f"renegx convert-reward {pickled} --trust-pickle" in message


def test_converter_refuses_pickle_without_the_flag_and_converts_with_it(pickled, capsys):
    assert convert_reward.main([str(pickled)]) == 2
    assert "re-run with --trust-pickle" in capsys.readouterr().err
    assert not pickled.with_suffix(".safetensors").exists()
    assert convert_reward.main([str(pickled), "--trust-pickle"]) == 0
    assert torch.equal(load_state_dict(pickled.with_suffix(".safetensors"), "converted")["a"], torch.ones(2))


def test_converter_keeps_shared_and_strided_tensors(tmp_path):
    base = torch.arange(12.0).view(3, 4)
    torch.save({"w": base, "w_t": base.t(), "alias": base}, tmp_path / "shared.pt")
    target = convert_reward.convert_reward_checkpoint(
        tmp_path / "shared.pt", tmp_path / "out" / "shared.safetensors"
    )
    loaded = load_state_dict(target, "converted")
    assert torch.equal(loaded["w_t"], base.t()) and torch.equal(loaded["alias"], base)


def test_converter_missing_file(tmp_path, capsys):
    assert convert_reward.main([str(tmp_path / "none.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert convert_reward.main([]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "renegx: error: renegx convert-reward: the following arguments are required: source"
    ]


def test_corrupt_files_are_one_line_errors(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    for name in ("bad.safetensors", "bad.pt"):
        with pytest.raises(RewardError, match="cannot read checkpoint"):
            load_state_dict(tmp_path / name, "checkpoint")


def test_check_state_dict_names_the_mismatches():
    expected = {"a": torch.zeros(2), "b": torch.zeros(3), "c": torch.zeros(1)}
    found = {"a": torch.zeros(2), "b": torch.zeros(4), "d": torch.zeros(1)}
    with pytest.raises(RewardError) as error:
        check_state_dict(expected, found, "model.pt")
    assert str(error.value) == (
        "model.pt does not fit the expected architecture; missing keys: c; unexpected keys: d; "
        "shape mismatch: b (4,) vs (3,)"
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [("./missing.pt", "file not found: ./missing.pt"), ("missing.pt", "file not found: missing.pt")],
)
def test_fetch_file_local_misses(spec, message):
    with pytest.raises(RewardError, match=message):
        fetch_file(spec, "checkpoint")


# renegx weights


def test_needs_of_the_paper_and_mixture_configs():
    import yaml

    needs = weights.config_needs(yaml.safe_load((CONFIGS / "sd15_hpsv2.yaml").read_text()))
    assert [(n.key, n.source) for n in needs] == [
        ("model.model", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
        ("model.reward.init_args.model", "xswu/HPSv2"),
        ("model.reward.init_args.tokenizer", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
    ]
    mix = weights.config_needs(yaml.safe_load((CONFIGS / "sd15_mix.yaml").read_text()))
    keys = [n.key for n in mix]
    assert "model.reward.init_args.rewards.1.init_args.model" in keys  # ImageReward, defaults filled in
    assert "model.reward.init_args.rewards.2.init_args.processor" in keys
    assert weights.config_needs(yaml.safe_load((CONFIGS / "tiny_mix.yaml").read_text())) == []


def test_offline_it_lists_what_it_would_fetch(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert weights.main(["--config", str(CONFIGS / "sd15_imagereward.yaml"), "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert (
        "nothing downloaded" in out and "THUDM--ImageReward" in out and "hf download THUDM/ImageReward" in out
    )
    assert not any(tmp_path.iterdir())


def test_with_files_present_it_writes_a_config_that_parses(tmp_path, monkeypatch, capsys):
    import yaml

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = CONFIGS / "sd15_mix.yaml"
    for need in weights.config_needs(yaml.safe_load(config.read_text())):
        path = need.local_path(tmp_path)
        if need.pick or need.is_url:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
        else:
            path.mkdir(parents=True, exist_ok=True)
            (path / "config.json").write_text("{}")
    assert weights.main(["--config", str(config), "--out", str(tmp_path)]) == 0
    written = tmp_path / "sd15_mix.offline.yaml"
    assert f"HF_HUB_OFFLINE=1 renegx fit --config {written}" in capsys.readouterr().out
    parsed = parse_config(written)
    assert parsed.model.model == str(tmp_path / "stable-diffusion-v1-5--stable-diffusion-v1-5")
    hps = parsed.model.reward.init_args.rewards[0].init_args
    assert hps.model == str(tmp_path / "xswu--HPSv2" / "HPS_v2.1_compressed.pt")


def test_tiny_config_needs_nothing(capsys):
    assert weights.main(["--config", str(CONFIGS / "tiny_hpsv2.yaml")]) == 0
    assert "needs no downloads" in capsys.readouterr().out
