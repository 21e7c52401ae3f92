import os
from functools import partial
from types import SimpleNamespace

import pytest
import torch
from assertions import assert_one_line_error
from safetensors import safe_open
from safetensors.torch import save_file

from renegx import files
from renegx.negatives.embedding import FORMAT, FORMAT_VERSION, EmbeddingError, NegativeEmbedding
from renegx.tiny import TINY_HIDDEN


def _randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


_one_line_error = partial(assert_one_line_error, EmbeddingError)


# -- the file format ---------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    embedding = NegativeEmbedding(_randn(1, 77, 768), metadata={"reward": "hpsv2", "train_steps": 500})
    path = embedding.save(tmp_path / "neg.safetensors")
    loaded = NegativeEmbedding.load(path, hidden_size=768, seq_len=77)
    assert torch.equal(loaded.embeds, embedding.embeds) and loaded.embeds.dtype == torch.float32
    assert loaded.pooled is None and loaded.attention_mask is None
    assert (loaded.kind, loaded.hidden_size, loaded.seq_len) == ("global", 768, 77)
    assert loaded.metadata["reward"] == "hpsv2" and loaded.metadata["train_steps"] == "500"
    assert loaded.metadata["format"] == FORMAT and loaded.metadata["format_version"] == FORMAT_VERSION
    assert loaded.metadata["kind"] == "global" and loaded.metadata["space"] == "text-encoder-output"
    assert (loaded.metadata["hidden_size"], loaded.metadata["seq_len"]) == ("768", "77")
    assert loaded.metadata["created_by"].startswith("renegx ")
    with safe_open(path, framework="pt") as reader:
        assert sorted(reader.keys()) == ["negative_prompt_embeds"]


def test_round_trip_keeps_companions_and_dtype(tmp_path):
    embedding = NegativeEmbedding(
        _randn(2, 8, 16, dtype=torch.float16),
        pooled=_randn(2, 12, seed=1),
        attention_mask=torch.ones(2, 8, dtype=torch.long),
    )
    loaded = NegativeEmbedding.load(embedding.save(tmp_path / "bank.safetensors"))
    assert loaded.kind == "bank" and loaded.metadata["kind"] == "bank"
    assert loaded.embeds.dtype == torch.float16 and torch.equal(loaded.embeds, embedding.embeds)
    assert torch.equal(loaded.pooled, embedding.pooled)
    assert loaded.attention_mask.dtype == torch.long
    assert torch.equal(loaded.attention_mask, embedding.attention_mask)


def test_official_reneg_bin_layout_loads(tmp_path):
    path = tmp_path / "sd1.5_reneg_emb.bin"
    tensor = _randn(1, 77, 768)
    torch.save(tensor, path)
    loaded = NegativeEmbedding.load(path, hidden_size=768, seq_len=77)
    assert torch.equal(loaded.embeds, tensor) and loaded.kind == "global"
    assert loaded.metadata == {"source_format": "reneg-bin"}


def test_pt_dict_with_one_tensor_loads(tmp_path):
    path = tmp_path / "neg.pt"
    torch.save({"whatever": _randn(1, 4, 8)}, path)
    assert NegativeEmbedding.load(path).embeds.shape == (1, 4, 8)


def test_safetensors_with_the_key_but_no_metadata_loads(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"negative_prompt_embeds": _randn(1, 4, 8)}, path)
    loaded = NegativeEmbedding.load(path)
    assert loaded.metadata == {} and loaded.embeds.shape == (1, 4, 8)


def test_metadata_values_must_be_strings_or_numbers(tmp_path):
    embedding = NegativeEmbedding(_randn(1, 4, 8), metadata={"prompts": ["a", "b"]})
    _one_line_error(lambda: embedding.save(tmp_path / "x.safetensors"), "'prompts'", "list")
    assert not (tmp_path / "x.safetensors").exists()


# -- refusals ------------------------------------------------------------------------------------------------


def test_wrong_hidden_size_is_refused(tmp_path):
    path = NegativeEmbedding(_randn(1, 77, 1024)).save(tmp_path / "sd21.safetensors")
    _one_line_error(
        lambda: NegativeEmbedding.load(path, hidden_size=768),
        str(path),
        "embedding hidden size 1024 does not match the text encoder's 768",
    )
    _one_line_error(lambda: NegativeEmbedding.load(path, seq_len=120), "sequence length 77", "120")


def test_rank_2_tensor_is_refused(tmp_path):
    path = tmp_path / "flat.bin"
    torch.save(_randn(77, 768), path)
    _one_line_error(lambda: NegativeEmbedding.load(path), "expected", "(1, L, D) or (N, L, D)", "(77, 768)")


def test_nan_tensor_is_refused(tmp_path):
    tensor = _randn(1, 4, 8)
    tensor[0, 1, 2] = float("nan")
    tensor[0, 3, 0] = float("inf")
    path = tmp_path / "nan.safetensors"
    save_file({"negative_prompt_embeds": tensor}, path)
    _one_line_error(lambda: NegativeEmbedding.load(path), "finite", "2 NaN/Inf")


def test_integer_tensor_is_refused():
    _one_line_error(lambda: NegativeEmbedding(torch.zeros(1, 4, 8, dtype=torch.long)), "floating", "int64")


def test_companion_shapes_are_checked():
    embeds = _randn(2, 4, 8)
    _one_line_error(lambda: NegativeEmbedding(embeds, pooled=_randn(1, 12)), "(2, P)", "(1, 12)")
    _one_line_error(lambda: NegativeEmbedding(embeds, attention_mask=torch.ones(2, 5)), "(2, 4)", "(2, 5)")


def test_a_recorded_start_survives_the_file_and_a_bad_one_is_refused(tmp_path):
    late = NegativeEmbedding(_randn(1, 4, 8), metadata={"negative_from": 0.5})
    assert NegativeEmbedding.load(late.save(tmp_path / "late.safetensors")).negative_from == 0.5
    assert NegativeEmbedding(_randn(1, 4, 8)).negative_from == 0.0
    for bad in ("1", "-0.1", "half", "nan"):
        _one_line_error(
            lambda bad=bad: NegativeEmbedding(_randn(1, 4, 8), metadata={"negative_from": bad}),
            f"metadata negative_from must be a fraction in [0, 1), got '{bad}'",
        )


def test_foreign_safetensors_is_refused(tmp_path):
    path = tmp_path / "EasyNegative.safetensors"
    save_file({"emb_params": _randn(8, 768)}, path)
    _one_line_error(
        lambda: NegativeEmbedding.load(path),
        "is not a renegx negative embedding",
        "found tensors: emb_params",
    )


def test_unsupported_format_version_is_refused(tmp_path):
    path = tmp_path / "future.safetensors"
    metadata = {"format": FORMAT, "format_version": "99"}
    save_file({"negative_prompt_embeds": _randn(1, 4, 8)}, path, metadata=metadata)
    _one_line_error(lambda: NegativeEmbedding.load(path), "format_version '99'", "reads 1")


def test_non_safetensors_file_is_refused(tmp_path):
    path = tmp_path / "fake.safetensors"
    path.write_bytes(b"this is not a safetensors file at all")
    _one_line_error(lambda: NegativeEmbedding.load(path), "is not a safetensors file")


def test_missing_file_is_refused(tmp_path):
    path = tmp_path / "nowhere.safetensors"
    _one_line_error(lambda: NegativeEmbedding.load(path), f"embedding file not found: {path}")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("suffix", [".bin", ".pt"])
def test_pickle_that_runs_code_is_refused(tmp_path, suffix):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    torch.save(_RunsCode(marker), path)
    _one_line_error(lambda: NegativeEmbedding.load(path), f"refusing to unpickle {path}", "system")
    assert not marker.exists()


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = NegativeEmbedding(_randn(1, 4, 8)).save(tmp_path / "neg.safetensors")
    before = path.read_bytes()

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", disk_full)
    with pytest.raises(OSError, match="No space"):
        NegativeEmbedding(_randn(1, 4, 8, seed=1)).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["neg.safetensors"]


# -- batching and pipelines ----------------------------------------------------------------------------------


def test_expand_repeats_a_global_embedding_and_checks_banks():
    embedding = NegativeEmbedding(_randn(1, 4, 8))
    expanded = embedding.expand(3, dtype=torch.float64)
    assert expanded.shape == (3, 4, 8) and expanded.dtype == torch.float64
    assert torch.equal(expanded[2], embedding.embeds[0].double())
    bank = NegativeEmbedding(_randn(2, 4, 8))
    assert torch.equal(bank.expand(2), bank.embeds)
    _one_line_error(lambda: bank.expand(3), "bank of 2", "batch size 3")


def _latents(pipe, **kwargs) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return pipe(
        ["a cat", "a dog"], num_inference_steps=2, output_type="latent", generator=generator, **kwargs
    ).images


def test_for_pipeline_matches_passing_the_expanded_tensor(tiny_pipe):
    embedding = NegativeEmbedding(_randn(1, 77, TINY_HIDDEN))
    kwargs = embedding.for_pipeline(tiny_pipe, 2)
    assert list(kwargs) == ["negative_prompt_embeds"]
    assert kwargs["negative_prompt_embeds"].shape == (2, 77, TINY_HIDDEN)
    with_helper = _latents(tiny_pipe, **kwargs)
    by_hand = _latents(tiny_pipe, negative_prompt_embeds=embedding.embeds.expand(2, -1, -1))
    assert with_helper.shape == (2, 4, 8, 8) and torch.isfinite(with_helper).all()
    assert torch.equal(with_helper, by_hand)


def test_for_pipeline_casts_to_the_pipeline_dtype(tiny_pipe):
    embedding = NegativeEmbedding(_randn(1, 77, TINY_HIDDEN, dtype=torch.float16))
    kwargs = embedding.for_pipeline(tiny_pipe, 2)
    assert kwargs["negative_prompt_embeds"].dtype == tiny_pipe.dtype == torch.float32
    assert kwargs["negative_prompt_embeds"].device == tiny_pipe.device


def test_for_pipeline_refuses_a_foreign_text_encoder(tiny_pipe):
    _one_line_error(
        lambda: NegativeEmbedding(_randn(1, 77, 768)).for_pipeline(tiny_pipe, 1),
        "hidden size 768 does not match the pipeline's text_encoder's 32",
    )
    _one_line_error(
        lambda: NegativeEmbedding(_randn(1, 120, TINY_HIDDEN)).for_pipeline(tiny_pipe, 1),
        "sequence length 120 does not match the pipeline's text_encoder's 77",
    )


def _clip_encoder(hidden_size: int, projection_dim: int | None = None) -> SimpleNamespace:
    config = SimpleNamespace(
        model_type="clip_text_model",
        hidden_size=hidden_size,
        max_position_embeddings=77,
        projection_dim=projection_dim,
    )
    return SimpleNamespace(config=config)


def test_a_late_negative_enters_the_pipeline_after_the_null_steps(tiny_pipe):
    """Two prompts × two images each: the callback swaps every copy's negative half at the window's start, and
    the pictures differ from both the null's and the negative's at every step."""
    late = NegativeEmbedding(_randn(1, 77, TINY_HIDDEN), metadata={"negative_from": "0.5"})
    kwargs = late.for_pipeline(tiny_pipe, 2)
    assert set(kwargs) == {"negative_prompt", "callback_on_step_end", "callback_on_step_end_tensor_inputs"}
    swapped = {}

    def spy(pipe, index, timestep, tensors):
        out = kwargs["callback_on_step_end"](pipe, index, timestep, tensors)
        if out:
            swapped[index] = out["prompt_embeds"]
        return out

    drawn = _latents(tiny_pipe, num_images_per_prompt=2, **{**kwargs, "callback_on_step_end": spy})
    assert list(swapped) == [0] and swapped[0].shape == (8, 77, TINY_HIDDEN)  # 2 steps: from index 1
    assert torch.equal(swapped[0][:4], late.embeds.expand(4, -1, -1))
    null = _latents(tiny_pipe, num_images_per_prompt=2)
    whole = _latents(
        tiny_pipe, num_images_per_prompt=2, **NegativeEmbedding(late.embeds).for_pipeline(tiny_pipe, 2)
    )
    assert not torch.allclose(drawn, null) and not torch.allclose(drawn, whole)


def test_your_step_callback_and_negative_prompt_compose_with_a_late_negative(tiny_pipe):
    """Through `for_pipeline`, not beside it: your callback runs at every step and sees the tensors it asks
    for, the picture is the late negative's, and a text negative prompt guides the steps before it."""
    late = NegativeEmbedding(_randn(1, 77, TINY_HIDDEN), metadata={"negative_from": "0.5"})
    seen = []

    def yours(pipe, index, timestep, tensors):
        seen.append((index, sorted(tensors)))
        return {}

    kwargs = late.for_pipeline(
        tiny_pipe, 2, callback_on_step_end=yours, callback_on_step_end_tensor_inputs=["latents"]
    )
    assert _latents(tiny_pipe, **kwargs).equal(_latents(tiny_pipe, **late.for_pipeline(tiny_pipe, 2)))
    assert seen == [(0, ["latents", "prompt_embeds"]), (1, ["latents", "prompt_embeds"])]
    texted = _latents(tiny_pipe, **late.for_pipeline(tiny_pipe, 2, negative_prompt="blurry"))
    assert not texted.equal(_latents(tiny_pipe, **late.for_pipeline(tiny_pipe, 2)))


def test_a_negative_prompt_beside_a_negative_that_acts_at_every_step_is_refused(tiny_pipe):
    whole = NegativeEmbedding(_randn(1, 77, TINY_HIDDEN))
    _one_line_error(
        lambda: whole.for_pipeline(tiny_pipe, 2, negative_prompt="blurry"),
        "negative_prompt 'blurry' would replace this learned negative",
    )
    steps = []
    kwargs = whole.for_pipeline(tiny_pipe, 2, callback_on_step_end=lambda p, i, t, x: steps.append(i) or {})
    _latents(tiny_pipe, **kwargs)
    assert steps == [0, 1]


def _sdxl_like(dtype=torch.float32) -> SimpleNamespace:
    """A pipeline with SDXL's two CLIP text encoders (hidden 8 + 24, projection 12) and nothing else."""
    return SimpleNamespace(
        text_encoder=_clip_encoder(8),
        text_encoder_2=_clip_encoder(24, projection_dim=12),
        device=torch.device("cpu"),
        dtype=dtype,
    )


def test_a_late_negative_is_refused_where_a_pipeline_cannot_swap_it():
    sdxl_like = _sdxl_like()
    late = NegativeEmbedding(_randn(1, 77, 32), pooled=_randn(1, 12), metadata={"negative_from": "0.5"})
    _one_line_error(
        lambda: late.for_pipeline(sdxl_like, 1),
        "acts from 0.5 of the schedule",
        "infer.py --sampler cfg",
    )


def test_for_pipeline_with_two_text_encoders_needs_the_sum_and_pooled():
    sdxl_like = _sdxl_like(torch.float64)
    embedding = NegativeEmbedding(_randn(1, 77, 32), pooled=_randn(1, 12))
    kwargs = embedding.for_pipeline(sdxl_like, 3)
    assert kwargs["negative_prompt_embeds"].shape == (3, 77, 32)
    assert kwargs["negative_pooled_prompt_embeds"].shape == (3, 12)
    assert kwargs["negative_pooled_prompt_embeds"].dtype == torch.float64
    _one_line_error(
        lambda: NegativeEmbedding(_randn(1, 77, 32)).for_pipeline(sdxl_like, 1),
        "needs negative_pooled_prompt_embeds",
    )
    _one_line_error(
        lambda: NegativeEmbedding(_randn(1, 77, 8), pooled=_randn(1, 12)).for_pipeline(sdxl_like, 1),
        "hidden size 8 does not match the pipeline's text_encoder + text_encoder_2's 32",
    )
    _one_line_error(
        lambda: NegativeEmbedding(_randn(1, 77, 32), pooled=_randn(1, 24)).for_pipeline(sdxl_like, 1),
        "pooled size 24",
        "projection size 12",
    )


def test_for_pipeline_expands_the_attention_mask_and_keeps_its_dtype():
    t5_like = SimpleNamespace(
        text_encoder=SimpleNamespace(config=SimpleNamespace(model_type="t5", hidden_size=16)),
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    embedding = NegativeEmbedding(_randn(1, 120, 16), attention_mask=torch.ones(1, 120, dtype=torch.long))
    kwargs = embedding.for_pipeline(t5_like, 2)
    assert kwargs["negative_prompt_embeds"].shape == (2, 120, 16)
    assert kwargs["negative_prompt_attention_mask"].shape == (2, 120)
    assert kwargs["negative_prompt_attention_mask"].dtype == torch.long
