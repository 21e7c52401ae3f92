"""The official ReNeg `.bin` files: loading, `renegx convert` (and its older name
`renegx convert`), provenance and masks."""

import subprocess
import sys
from functools import partial

import pytest
import torch
from assertions import assert_one_line_error

from renegx.cli.convert import main as convert_main
from renegx.negatives.embedding import EmbeddingError, NegativeEmbedding, convert_official
from renegx.negatives.official import OFFICIAL_MODELS, official_model

_one_line_error = partial(assert_one_line_error, EmbeddingError)


def _official_bin(tmp_path, name: str) -> tuple:
    shape = OFFICIAL_MODELS[name].shape
    tensor = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    path = tmp_path / f"{name}_reneg_emb.bin"
    torch.save(tensor, path)
    return path, tensor


@pytest.mark.parametrize("name", ["sd1.4", "sd1.5", "sd2.1", "pixart-alpha"])
def test_every_official_layout_loads_as_a_bare_tensor(tmp_path, name):
    path, tensor = _official_bin(tmp_path, name)
    _, seq_len, hidden = tensor.shape
    loaded = NegativeEmbedding.load(path, hidden_size=hidden, seq_len=seq_len)
    assert torch.equal(loaded.embeds, tensor) and loaded.kind == "global"
    if name == "pixart-alpha":  # T5: the documented default mask, every row attended
        assert torch.equal(loaded.attention_mask, torch.ones(1, 120, dtype=torch.long))
        assert loaded.metadata == {"source_format": "reneg-bin", "attention_mask": "all"}
    else:
        assert loaded.attention_mask is None and loaded.metadata == {"source_format": "reneg-bin"}


@pytest.mark.parametrize("name", ["sd1.4", "sd1.5", "sd2.1", "pixart-alpha"])
def test_convert_writes_the_tensor_with_its_provenance(tmp_path, name):
    path, tensor = _official_bin(tmp_path, name)
    target = convert_official(path, tmp_path / "new.safetensors", base_model=name)
    loaded = NegativeEmbedding.load(target)
    model = OFFICIAL_MODELS[name]
    assert torch.equal(loaded.embeds, tensor)
    assert loaded.metadata["base_model"] == model.base_model
    assert loaded.metadata["text_encoder_id"] == model.text_encoder_id
    assert loaded.metadata["source_file"] == path.name
    assert loaded.metadata["hidden_size"] == str(model.shape[2])
    assert (loaded.attention_mask is not None) == (name == "pixart-alpha")
    if name == "sd2.1":
        assert loaded.metadata["prediction_type"] == "v_prediction"


def test_pixart_mask_can_be_the_empty_prompts(tmp_path):
    path, _ = _official_bin(tmp_path, "pixart-alpha")
    target = convert_official(path, tmp_path / "new.safetensors", "pixart-alpha", attention_mask="empty")
    mask = NegativeEmbedding.load(target).attention_mask
    assert mask.shape == (1, 120) and mask[0, 0] == 1 and mask[0, 1:].sum() == 0


def test_base_model_accepts_the_hub_id():
    assert official_model("stabilityai/stable-diffusion-2-1").name == "sd2.1"
    assert official_model("SD1.5").name == "sd1.5"
    assert official_model("sdxl") is None


def test_convert_refuses_a_shape_of_another_model(tmp_path):
    path, _ = _official_bin(tmp_path, "sd1.5")
    _one_line_error(
        lambda: convert_official(path, tmp_path / "new.safetensors", "sd2.1"),
        "a sd2.1 embedding has shape (1, 77, 1024), got (1, 77, 768)",
    )


def test_convert_refuses_an_unknown_model_and_mask(tmp_path):
    path, _ = _official_bin(tmp_path, "sd1.5")
    _one_line_error(
        lambda: convert_official(path, tmp_path / "n.safetensors", "sdxl"),
        "unknown --base-model 'sdxl'; known: sd1.4, sd1.5, sd2.1, pixart-alpha",
    )
    _one_line_error(
        lambda: convert_official(path, tmp_path / "n.safetensors", "sd1.5", attention_mask="some"),
        "unknown --attention-mask 'some'",
    )


def test_convert_refuses_a_pickle_that_runs_code(tmp_path):
    path = tmp_path / "evil.bin"
    torch.save({"x": torch.zeros(1), "f": print}, path)
    _one_line_error(
        lambda: convert_official(path, tmp_path / "n.safetensors", "sd1.5"), "refusing to unpickle"
    )


def test_main_prints_the_target_and_exit_codes(tmp_path, capsys):
    path, _ = _official_bin(tmp_path, "sd1.5")
    target = tmp_path / "new.safetensors"
    assert convert_main([str(path), str(target), "--base-model", "sd1.5"]) == 0
    assert capsys.readouterr().out.strip() == str(target)
    assert convert_main([str(path), str(target), "--base-model", "nope"]) == 2
    assert capsys.readouterr().err.startswith("renegx: error: unknown --base-model 'nope'")


@pytest.mark.slow
def test_convert_runs_as_a_command(tmp_path):
    path, tensor = _official_bin(tmp_path, "sd2.1")
    target = tmp_path / "sd21.safetensors"
    command = [sys.executable, "-m", "renegx.cli", "convert", str(path), str(target)]
    done = subprocess.run([*command, "--base-model", "sd2.1"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert torch.equal(NegativeEmbedding.load(target).embeds, tensor)


def test_convert_keeps_its_name_in_usage_errors(capsys):
    assert convert_main(["a.bin", "b.safetensors"]) == 2
    assert "renegx convert: the following arguments are required: --base-model" in (capsys.readouterr().err)
