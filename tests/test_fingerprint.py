"""A negative knows its text encoder: exports record a fingerprint of the encoder weights, and loading one
against other weights warns in one line or, with --strict-encoder, refuses (renegx/negatives/fingerprint.py).
"""

import copy
import re
import warnings

import pytest
import torch

from renegx.cli import infer_main
from renegx.models import load_backbone
from renegx.negatives.bank import EmbeddingBank
from renegx.negatives.embedding import NegativeEmbedding
from renegx.negatives.fingerprint import (
    FINGERPRINT_KEY,
    EncoderMismatch,
    text_encoder_fingerprint,
    token_embedding_fingerprint,
)
from renegx.negatives.spec import InferenceError, resolve_negative
from renegx.rewards import ClipScore
from renegx.train.callbacks import export_embedding
from renegx.train.module import ReNegModule

FINGERPRINT = re.compile(r"^s1:[0-9a-f]{16}$")


def _perturbed(backbone):
    """`backbone` with one weight of its text encoder's token embedding negated (a copy)."""
    other = copy.deepcopy(backbone)
    with torch.no_grad():
        other.text_encoder.get_input_embeddings().weight[7, 3] *= -1
    return other


def _file(path, backbone, base_model="tiny", rows=1) -> str:
    """A negative whose metadata is what an export from `backbone` records."""
    metadata = {"base_model": base_model, **backbone.text_encoder_metadata()}
    embeds = backbone.null_embedding().expand(rows, -1, -1).contiguous()
    if rows == 1:
        NegativeEmbedding(embeds, metadata=metadata).save(path)
    else:
        prompts = [f"prompt {row}" for row in range(rows)]
        EmbeddingBank(NegativeEmbedding(embeds, metadata=metadata), prompts).save(path)
    return str(path)


def test_a_toy_export_records_the_fingerprint_of_its_text_encoder(tmp_path):
    with torch.random.fork_rng():
        module = ReNegModule(reward=ClipScore(model="tiny"), model="toy", num_inference_steps=4, stop_steps=1)
    path = export_embedding(module, tmp_path, with_card=False)
    metadata = NegativeEmbedding.load(path).metadata
    assert FINGERPRINT.match(metadata[FINGERPRINT_KEY]), metadata[FINGERPRINT_KEY]
    assert metadata[FINGERPRINT_KEY] == text_encoder_fingerprint(load_backbone("toy").text_encoders)
    assert metadata["base_model"] == "toy"


def test_the_fingerprint_is_the_same_in_every_floating_dtype():
    """Casting never changes a sign, an underflow included (fp16 flushes 1e-30 to a signed zero)."""
    weight = torch.randn(300, 24, generator=torch.Generator().manual_seed(0))
    weight[0, :4] = torch.tensor([1e-30, -1e-30, 0.0, -7e-8])
    fingerprint = token_embedding_fingerprint([weight])
    for dtype in (torch.float64, torch.float16, torch.bfloat16, torch.float8_e4m3fn):
        assert token_embedding_fingerprint([weight.to(dtype)]) == fingerprint, dtype
    assert token_embedding_fingerprint([weight.to(torch.float16).float()]) == fingerprint


def test_one_changed_sign_changes_the_fingerprint_and_encoders_are_told_apart():
    weight = torch.randn(300, 24, generator=torch.Generator().manual_seed(0))
    changed = weight.clone()
    changed[299, 23] *= -1
    first = token_embedding_fingerprint([weight])
    assert token_embedding_fingerprint([changed]) != first
    assert token_embedding_fingerprint([weight, weight]) != first  # two encoders are not one
    assert token_embedding_fingerprint([weight.reshape(600, 12)]) != first  # nor another shape


def test_an_sdxl_fingerprint_covers_both_encoders(tmp_path):
    with torch.random.fork_rng():
        backbone = load_backbone("tiny-sdxl")
    recorded = backbone.text_encoder_metadata()[FINGERPRINT_KEY]
    with torch.no_grad():
        backbone.text_encoder_2.get_input_embeddings().weight[0, 0] *= -1
    assert FINGERPRINT.match(recorded) and text_encoder_fingerprint(backbone.text_encoders) != recorded


def test_a_perturbed_encoder_warns_once_naming_both_fingerprints_and_models(tmp_path, capsys, one_thread):
    tiny = load_backbone("tiny")
    made = _file(tmp_path / "finetuned.safetensors", _perturbed(tiny), base_model="tiny-finetune")
    recorded = NegativeEmbedding.load(made).metadata[FINGERPRINT_KEY]
    actual = text_encoder_fingerprint(tiny.text_encoders)
    assert recorded != actual
    out = tmp_path / "out"
    argv = ["--model", "tiny", "--negative", made, "--prompt", "a cat", "--steps", "1", "--out", str(out)]
    assert infer_main(argv) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("renegx:")]
    assert lines == [
        f"renegx: warning: {made} was trained against text encoder {recorded} of 'tiny-finetune', but 'tiny' "
        f"has text encoder {actual}; it may guide poorly (--strict-encoder refuses it)"
    ]
    assert (out / "0000_seed0.png").is_file()


def test_strict_encoder_refuses_in_one_line_and_writes_nothing(tmp_path, capsys, one_thread):
    tiny = load_backbone("tiny")
    made = _file(tmp_path / "finetuned.safetensors", _perturbed(tiny))
    out = tmp_path / "out"
    for sampler in ([], ["--sampler", "cfg"]):
        argv = ["--negative", made, "--prompt", "a cat", "--steps", "1", "--out", str(out)]
        assert infer_main([*argv, "--strict-encoder", *sampler]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-1].startswith(f"renegx: error: {made} was trained against text encoder s1:")
        assert lines[-1].endswith("; --strict-encoder refuses another text encoder")
        assert not any(line.startswith("renegx: warning") for line in lines)
        assert not [path for path in out.rglob("*") if path.is_file()]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_same_weights_in_another_dtype_pass_even_strictly(tmp_path, dtype):
    tiny = load_backbone("tiny")
    made = _file(tmp_path / "tiny.safetensors", tiny, rows=2)  # a bank: its rows record it too
    cast = copy.deepcopy(tiny)
    cast.text_encoder.to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_negative(made, cast, strict_encoder=True).kind == "bank"


def test_a_bank_of_another_encoder_warns_and_a_file_without_a_fingerprint_says_nothing(tmp_path):
    tiny = load_backbone("tiny")
    bank = _file(tmp_path / "bank.safetensors", _perturbed(tiny), rows=2)
    with pytest.warns(EncoderMismatch, match="bank.safetensors was trained against text encoder s1:"):
        resolve_negative(bank, tiny)
    with pytest.raises(InferenceError, match="--strict-encoder refuses"):
        resolve_negative(bank, tiny, strict_encoder=True)
    old = tmp_path / "old.safetensors"
    NegativeEmbedding(tiny.null_embedding(), metadata={"base_model": "tiny"}).save(old)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_negative(str(old), tiny, strict_encoder=True).kind == "embedding"
