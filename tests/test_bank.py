"""Embedding banks: the file, prompt → row lookup with a global fallback, pipelines and infer.py."""

import json
from functools import partial

import pytest
import torch
from assertions import assert_one_line_error
from safetensors import safe_open

from renegx.cli import infer_main
from renegx.negatives.bank import EmbeddingBank
from renegx.negatives.embedding import EmbeddingError, NegativeEmbedding
from renegx.tiny import TINY_HIDDEN

PROMPTS = ["a cat", "a dog", "un château à l'aube"]


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _bank(hidden: int = TINY_HIDDEN, fallback: bool = True, prompts=PROMPTS) -> EmbeddingBank:
    rows = NegativeEmbedding(_randn(len(prompts), 77, hidden), metadata={"base_model": "tiny"})
    return EmbeddingBank(
        rows, list(prompts), NegativeEmbedding(_randn(1, 77, hidden, seed=1)) if fallback else None
    )


_one_line_error = partial(assert_one_line_error, EmbeddingError)


def test_bank_file_round_trip_keeps_rows_prompts_and_fallback(tmp_path):
    bank = _bank()
    path = bank.save(tmp_path / "bank.safetensors")
    with safe_open(path, framework="pt") as reader:
        assert sorted(reader.keys()) == ["fallback_negative_prompt_embeds", "negative_prompt_embeds"]
        metadata = reader.metadata()
    assert metadata["kind"] == "bank" and json.loads(metadata["prompts"]) == PROMPTS
    loaded = EmbeddingBank.load(path, hidden_size=TINY_HIDDEN, seq_len=77)
    assert loaded.prompts == PROMPTS and len(loaded) == 3 and "a dog" in loaded and "a cow" not in loaded
    assert torch.equal(loaded.rows.embeds, bank.rows.embeds)
    assert torch.equal(loaded.fallback.embeds, bank.fallback.embeds)
    assert loaded.metadata["base_model"] == "tiny" and "prompts" not in loaded.metadata
    assert EmbeddingBank.is_bank_file(path) and not EmbeddingBank.is_bank_file(
        tmp_path / "missing.safetensors"
    )


def test_a_bank_file_is_refused_as_one_embedding_and_named(tmp_path):
    """Read as one embedding, a bank's rows would go to prompts by position, not by their text."""
    path = _bank().save(tmp_path / "bank.safetensors")
    message = _one_line_error(lambda: NegativeEmbedding.load(path), str(path), "bank of 3 prompts")
    assert "by position" in message and "load it with EmbeddingBank.load" in message
    rows = NegativeEmbedding(_randn(3, 77, TINY_HIDDEN)).save(tmp_path / "rows.safetensors")
    assert NegativeEmbedding.load(rows).kind == "bank" and not EmbeddingBank.is_bank_file(rows)  # no prompts
    global_path = NegativeEmbedding(_randn(1, 77, TINY_HIDDEN)).save(tmp_path / "global.safetensors")
    assert not EmbeddingBank.is_bank_file(global_path)


def test_a_one_prompt_bank_without_fallback_stays_a_bank(tmp_path):
    path = _bank(fallback=False, prompts=["a cat"]).save(tmp_path / "one.safetensors")
    loaded = EmbeddingBank.load(path)
    assert loaded.fallback is None and loaded.rows.kind == "bank" and loaded.prompts == ["a cat"]


def test_select_picks_each_prompts_row_and_the_fallback_for_others():
    bank = _bank()
    chosen = bank.select(["a dog", "a cow", "a cat", "a dog"])
    expected = torch.stack(
        [bank.rows.embeds[1], bank.fallback.embeds[0], bank.rows.embeds[0], bank.rows.embeds[1]]
    )
    assert torch.equal(chosen.embeds, expected) and chosen.kind == "bank"
    assert bank.unknown(["a cow", "a dog", "a cow"]) == ["a cow"]


def test_unknown_prompts_fail_when_asked_or_without_fallback():
    _one_line_error(lambda: _bank().select(["a cat", "a cow"], "error"), "1 prompt(s)", "'a cow'", "'error'")
    _one_line_error(lambda: _bank(fallback=False).select(["a cow"]), "'a cow'", "no global fallback")
    _one_line_error(lambda: _bank().select(["a cat"], "nearest"), "unknown bank fallback 'nearest'")
    assert _bank(fallback=False).select(["a cat"]).embeds.shape == (1, 77, TINY_HIDDEN)


def test_bad_banks_are_refused(tmp_path):
    rows = NegativeEmbedding(_randn(2, 77, 8))
    _one_line_error(lambda: EmbeddingBank(rows, ["a", "a"]), "'a' more than once")
    _one_line_error(lambda: EmbeddingBank(rows, ["a"]), "2 embedding rows needs 2 prompts, got 1")
    _one_line_error(
        lambda: EmbeddingBank(rows, ["a", "b"], NegativeEmbedding(_randn(1, 77, 16))),
        "hidden size 16",
        "rows",
    )
    _one_line_error(lambda: EmbeddingBank(rows, ["a", "b"], NegativeEmbedding(_randn(2, 77, 8))), "one row")
    global_path = NegativeEmbedding(_randn(1, 77, 8)).save(tmp_path / "global.safetensors")
    _one_line_error(lambda: EmbeddingBank.load(global_path), "is a global embedding, not a bank")
    rows_only = rows.save(tmp_path / "rows.safetensors")
    _one_line_error(lambda: EmbeddingBank.load(rows_only), "2 rows but no 'prompts' metadata")
    narrow = EmbeddingBank(rows, ["a", "b"]).save(tmp_path / "narrow.safetensors")
    _one_line_error(
        lambda: EmbeddingBank.load(narrow, hidden_size=768),
        "hidden size 8 does not match the text encoder's 768",
    )


def test_extra_tensors_may_not_shadow_the_embedding(tmp_path):
    embedding = NegativeEmbedding(_randn(1, 4, 8))
    _one_line_error(
        lambda: embedding.save(
            tmp_path / "x.safetensors", extra_tensors={"negative_prompt_embeds": _randn(1, 4, 8)}
        ),
        "must not reuse",
    )


# -- pipelines and infer.py ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_for_prompts_feeds_each_prompt_its_row(tiny_pipe):
    bank = _bank()
    prompts = ["a dog", "a cow"]
    kwargs = bank.for_prompts(tiny_pipe, prompts)
    assert list(kwargs) == ["negative_prompt_embeds"] and kwargs["negative_prompt_embeds"].shape == (
        2,
        77,
        32,
    )

    def latents(**kw):
        return tiny_pipe(
            prompts,
            num_inference_steps=2,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
            **kw,
        ).images

    by_hand = torch.cat([bank.rows.embeds[1:2], bank.fallback.embeds])
    assert torch.equal(latents(**kwargs), latents(negative_prompt_embeds=by_hand))
    _one_line_error(
        lambda: _bank(hidden=768).for_prompts(tiny_pipe, ["a cat"]), "hidden size 768", "text_encoder"
    )


def _one_line_cli_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("renegx: error: ")
    return err[-1]


@pytest.mark.slow
def test_infer_with_a_bank_picks_rows_and_falls_back(tmp_path, capsys):
    bank = _bank()
    bank_path = bank.save(tmp_path / "bank.safetensors")
    NegativeEmbedding(bank.rows.embeds[1:2]).save(tmp_path / "dog_row.safetensors")
    NegativeEmbedding(bank.fallback.embeds).save(tmp_path / "fallback.safetensors")

    def infer(negative, out, *prompts, extra=()):
        args = [a for p in prompts for a in ("--prompt", p)]
        return infer_main(
            [*args, "--negative", str(negative), "--steps", "2", "--out", str(tmp_path / out), *extra]
        )

    def png(out, index):
        return (tmp_path / out / f"{index:04d}_seed0.png").read_bytes()

    # --batch-size 1: each image alone, so its floats match a one-prompt run bit for bit.
    assert infer(bank_path, "bank", "a dog", "a cow", extra=("--batch-size", "1")) == 0
    assert infer(tmp_path / "dog_row.safetensors", "row", "a dog") == 0
    assert infer(tmp_path / "fallback.safetensors", "fallback", "a cow") == 0
    assert png("bank", 0) == png("row", 0) and png("bank", 1) == png("fallback", 0) != png("bank", 0)
    dog, cow = (
        json.loads((tmp_path / "bank" / f"000{i}_seed0.json").read_text())["negative"] for i in (0, 1)
    )
    assert dog["kind"] == "bank" and dog["bank_row"] == "prompt" and cow["bank_row"] == "fallback"
    assert dog["bank_prompts"] == 3 and dog["metadata"]["base_model"] == "tiny"

    assert infer(bank_path, "strict", "a dog", "a cow", extra=("--bank-fallback", "error")) == 2
    assert "'a cow'" in _one_line_cli_error(capsys)
    assert not (tmp_path / "strict" / "0000_seed0.png").exists()  # refused before drawing anything
    assert infer(_bank(fallback=False).save(tmp_path / "bare.safetensors"), "bare", "a cow") == 2
    assert "no global fallback" in _one_line_cli_error(capsys)
    assert infer(_bank(hidden=768).save(tmp_path / "wide.safetensors"), "wide", "a dog") == 2
    assert "768" in _one_line_cli_error(capsys)


@pytest.mark.slow
def test_infer_counts_fallbacks_and_warns_when_the_bank_holds_no_prompt(tmp_path):
    path = _bank().save(tmp_path / "bank.safetensors")

    def sidecar(out, *prompts):
        argv = [a for p in prompts for a in ("--prompt", p)]
        assert infer_main([*argv, "--negative", str(path), "--steps", "1", "--out", str(tmp_path / out)]) == 0
        return json.loads((tmp_path / out / "0000_seed0.json").read_text())["negative"]

    partly = sidecar("partly", "a dog", "a cow")
    assert (partly["bank_run_prompts"], partly["bank_fallback_prompts"]) == (2, 1)
    with pytest.warns(UserWarning, match="holds none of the 2 prompt"):
        record = sidecar("none", "a cow", "a horse")
    assert (record["bank_run_prompts"], record["bank_fallback_prompts"], record["bank_row"]) == (
        2,
        2,
        "fallback",
    )


@pytest.mark.slow
def test_evaluate_counts_bank_fallbacks_in_the_report(tmp_path, capsys):
    from renegx.evaluate.__main__ import evaluate_main

    (tmp_path / "prompts.txt").write_text("a cat\na horse\na cow\n")
    strangers = _bank(prompts=["a dog", "a fish"]).save(tmp_path / "strangers.safetensors")
    neighbours = _bank().save(tmp_path / "neighbours.safetensors")
    argv = ["--model", "tiny", "--benchmark", str(tmp_path / "prompts.txt"), "--judges", "clip"]
    argv += ["--judge-opt", "model=tiny", "--steps", "1", "--bootstrap", "20", "--out", str(tmp_path / "out")]
    argv += ["--negatives", f"null,{strangers},{neighbours}"]
    with pytest.warns(UserWarning, match="strangers.safetensors holds none of the 3 prompt"):
        assert evaluate_main(argv) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["generation"]["bank_fallbacks"] == {
        "strangers": {"images": 3, "fallback": 3},
        "neighbours": {"images": 3, "fallback": 2},
    }
    assert "bank 'strangers': 3 of 3 images used its global row" in capsys.readouterr().out
