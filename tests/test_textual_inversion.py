"""Textual-inversion negatives: every real file layout, the encoding A1111 does, the checks, `ti:FILE` in
infer.py, the samplers and the evaluator's negatives."""

import json

import pytest
import torch
from assertions import assert_one_line_error
from safetensors.torch import save_file

from renegx.cli import infer_main
from renegx.models import load_backbone
from renegx.negatives.embedding import NegativeEmbedding
from renegx.negatives.spec import InferenceError, resolve_negative
from renegx.negatives.textual_inversion import TextualInversion, TextualInversionError
from renegx.tiny import TINY_HIDDEN

WORDS = "a blurry cat"


@pytest.fixture(scope="module")
def tiny():
    with torch.random.fork_rng():
        return load_backbone("tiny")


@pytest.fixture(scope="module")
def tiny_sdxl():
    with torch.random.fork_rng():
        return load_backbone("tiny-sdxl")


def _word_vectors(tokenizer, encoder, text: str = WORDS) -> torch.Tensor:
    """The token embeddings of `text`'s tokens: a TI of these vectors must encode exactly as `text` does."""
    ids = tokenizer(text).input_ids[1:-1]
    return encoder.get_input_embeddings().weight[ids].detach().clone()


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _write_layouts(folder, vectors: torch.Tensor) -> dict[str, object]:
    """The same vectors in each layout community files come in, as their tools write them."""
    a1111_pt = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": torch.nn.Parameter(vectors.clone())},
        "name": "easynegative",
        "step": 10000,
        "sd_checkpoint": "a9263745",
        "sd_checkpoint_name": "v1-5-pruned",
    }
    torch.save(a1111_pt, folder / "easynegative.pt")
    save_file({"emb_params": vectors.contiguous()}, folder / "easynegative.safetensors")
    save_file({"<bad-thing>": vectors.contiguous()}, folder / "learned_embeds.safetensors")
    torch.save({"<bad-thing>": vectors.clone()}, folder / "learned_embeds.bin")
    return {
        "easynegative.pt": ("a1111-pt", "easynegative"),
        "easynegative.safetensors": ("a1111-safetensors", "easynegative"),
        "learned_embeds.safetensors": ("diffusers", "<bad-thing>"),
        "learned_embeds.bin": ("diffusers", "<bad-thing>"),
    }


def test_every_layout_encodes_like_the_words_its_vectors_embed(tmp_path, tiny):
    vectors = _word_vectors(tiny.tokenizer, tiny.text_encoder)
    expected = tiny.encode_prompts([WORDS])
    for name, (layout, token) in _write_layouts(tmp_path, vectors).items():
        inversion = TextualInversion.load(tmp_path / name)
        assert (inversion.layout, inversion.name, inversion.count) == (layout, token, len(vectors)), name
        negative = inversion.negative(tiny)
        assert negative.embeds.shape == (1, 77, TINY_HIDDEN) and negative.kind == "global"
        torch.testing.assert_close(negative.embeds, expected, rtol=0, atol=1e-6)
        assert negative.metadata["ti_layout"] == layout and negative.metadata["ti_vectors"] == str(
            len(vectors)
        )


def test_a_one_vector_diffusers_file_of_shape_d(tmp_path, tiny):
    vector = _word_vectors(tiny.tokenizer, tiny.text_encoder, "a")[0]
    assert vector.shape == (TINY_HIDDEN,)
    save_file({"<a>": vector}, tmp_path / "a.safetensors")
    negative = TextualInversion.load(tmp_path / "a.safetensors").negative(tiny)
    torch.testing.assert_close(negative.embeds, tiny.encode_prompts(["a"]), rtol=0, atol=1e-6)


def test_an_sdxl_pair_feeds_both_encoders_and_the_pooled_vector(tmp_path, tiny_sdxl):
    clip_l = _word_vectors(tiny_sdxl.tokenizer, tiny_sdxl.text_encoder)
    clip_g = _word_vectors(tiny_sdxl.tokenizer_2, tiny_sdxl.text_encoder_2)
    save_file({"clip_l": clip_l.contiguous(), "clip_g": clip_g.contiguous()}, tmp_path / "pair.safetensors")
    inversion = TextualInversion.load(tmp_path / "pair.safetensors")
    assert inversion.layout == "sdxl-pair" and inversion.count == len(clip_l)
    negative = inversion.negative(tiny_sdxl)
    embeds, pooled = tiny_sdxl.negative_parts(tiny_sdxl.encode_prompts([WORDS]))
    torch.testing.assert_close(negative.embeds, embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(negative.pooled, pooled, rtol=0, atol=1e-6)
    pipe = tiny_sdxl.pipeline()
    kwargs = resolve_negative(f"ti:{tmp_path / 'pair.safetensors'}", tiny_sdxl).pipeline_kwargs(
        pipe, ["x"], 5.0
    )
    assert kwargs["negative_prompt_embeds"].shape == (1, 77, 2 * TINY_HIDDEN)
    assert kwargs["negative_pooled_prompt_embeds"].shape == (1, TINY_HIDDEN)


def test_saved_files_are_a1111_safetensors_and_read_back(tmp_path, tiny):
    from safetensors import safe_open

    vectors = _randn(4, TINY_HIDDEN)
    path = TextualInversion([vectors], "toy-negative", metadata={"seed": "0"}).save(
        tmp_path / "t.safetensors"
    )
    with safe_open(path, framework="pt") as reader:
        assert list(reader.keys()) == ["emb_params"] and reader.metadata()["name"] == "toy-negative"
    back = TextualInversion.load(path)
    assert (
        back.layout == "a1111-safetensors"
        and back.name == "toy-negative"
        and torch.equal(back.vectors[0], vectors)
    )
    pair = TextualInversion([_randn(2, 8), _randn(2, 16, seed=1)], "p").save(tmp_path / "p.safetensors")
    assert TextualInversion.load(pair).layout == "sdxl-pair"


def test_refusals_are_one_line(tmp_path, tiny, tiny_sdxl):
    def refused(call, *words):
        assert_one_line_error(TextualInversionError, call, *words)

    save_file(
        {"clip_l": _randn(2, TINY_HIDDEN), "clip_g": _randn(2, TINY_HIDDEN)}, tmp_path / "xl.safetensors"
    )
    refused(
        lambda: TextualInversion.load(tmp_path / "xl.safetensors").negative(tiny),
        "SDXL textual inversion (clip_l 32 + clip_g 32 wide)",
        "model 'tiny' is SD1.x/2.x",
    )
    save_file({"emb_params": _randn(2, TINY_HIDDEN)}, tmp_path / "sd1.safetensors")
    refused(
        lambda: TextualInversion.load(tmp_path / "sd1.safetensors").negative(tiny_sdxl),
        "model 'tiny-sdxl' is SDXL",
        "clip_l/clip_g pair",
    )
    save_file({"emb_params": _randn(2, 768)}, tmp_path / "wide.safetensors")
    refused(
        lambda: TextualInversion.load(tmp_path / "wide.safetensors").negative(tiny),
        "vectors 768 wide",
        "embeds tokens 32 wide",
    )
    save_file({"emb_params": _randn(80, TINY_HIDDEN)}, tmp_path / "long.safetensors")
    refused(lambda: TextualInversion.load(tmp_path / "long.safetensors").negative(tiny), "80 vectors", "75")
    save_file(
        {"emb_params": _randn(2, TINY_HIDDEN)}, tmp_path / "other.safetensors", {"text_encoder_id": "clip/h9"}
    )
    refused(
        lambda: TextualInversion.load(tmp_path / "other.safetensors").negative(tiny),
        "made for text encoder clip/h9",
    )
    save_file({"a": _randn(2, 4), "b": _randn(2, 4)}, tmp_path / "two.safetensors")
    refused(
        lambda: TextualInversion.load(tmp_path / "two.safetensors"), "no textual-inversion layout", "a, b"
    )
    save_file({"emb_params": torch.ones(2, 4, dtype=torch.int32)}, tmp_path / "int.safetensors")
    refused(lambda: TextualInversion.load(tmp_path / "int.safetensors"), "floating-point")
    save_file({"emb_params": torch.full((2, 4), float("nan"))}, tmp_path / "nan.safetensors")
    refused(lambda: TextualInversion.load(tmp_path / "nan.safetensors"), "NaN")
    save_file({"clip_l": _randn(2, 4), "clip_g": _randn(3, 4)}, tmp_path / "uneven.safetensors")
    refused(lambda: TextualInversion.load(tmp_path / "uneven.safetensors"), "unequal vector counts")
    (tmp_path / "x.ckpt").write_bytes(b"")
    refused(lambda: TextualInversion.load(tmp_path / "x.ckpt"), ".safetensors, .pt, .bin")
    refused(lambda: TextualInversion.load(tmp_path / "missing.pt"), "not found")


class _Payload:
    """Anything but tensors and plain containers: must never be unpickled."""


def test_pickles_are_read_with_weights_only(tmp_path):
    torch.save({"string_to_param": {"*": _randn(2, 4)}, "extra": _Payload()}, tmp_path / "evil.pt")
    assert_one_line_error(
        TextualInversionError, lambda: TextualInversion.load(tmp_path / "evil.pt"), "refusing to unpickle"
    )
    torch.save({"<t>": _randn(4)}, tmp_path / "whole.bin")
    (tmp_path / "junk.bin").write_bytes((tmp_path / "whole.bin").read_bytes()[:100])
    assert_one_line_error(
        TextualInversionError,
        lambda: TextualInversion.load(tmp_path / "junk.bin"),
        "not a readable torch tensor file",
    )


def test_a_ti_file_named_without_ti_prefix_says_how_to_use_it(tmp_path, tiny):
    save_file({"emb_params": _randn(2, TINY_HIDDEN)}, tmp_path / "easy.safetensors")
    assert_one_line_error(
        InferenceError, lambda: resolve_negative(str(tmp_path / "easy.safetensors"), tiny), "use ti:"
    )
    assert_one_line_error(
        InferenceError, lambda: resolve_negative("ti:", tiny), "needs a textual-inversion file"
    )


def test_infer_with_ti_draws_as_the_equivalent_embedding_and_records_it(tmp_path, tiny):
    vectors = _word_vectors(tiny.tokenizer, tiny.text_encoder)
    ti_path = TextualInversion([vectors], "easynegative").save(tmp_path / "easynegative.safetensors")
    NegativeEmbedding(tiny.encode_prompts([WORDS])).save(tmp_path / "same.safetensors")

    def infer(negative, out, *extra):
        argv = ["--prompt", "a cat", "--negative", negative, "--steps", "2", "--out", str(tmp_path / out)]
        return infer_main([*argv, *extra])

    assert infer(f"ti:{ti_path}", "ti") == 0
    assert infer(str(tmp_path / "same.safetensors"), "same") == 0
    assert (tmp_path / "ti" / "0000_seed0.png").read_bytes() == (
        tmp_path / "same" / "0000_seed0.png"
    ).read_bytes()
    record = json.loads((tmp_path / "ti" / "0000_seed0.json").read_text())["negative"]
    assert (record["kind"], record["layout"], record["name"], record["vectors"]) == (
        "ti",
        "a1111-safetensors",
        "easynegative",
        len(vectors),
    )
    # The samplers take it as their base negative.
    assert infer(f"ti:{ti_path}", "sampled", "--sampler", "cfg") == 0
    assert infer(str(tmp_path / "same.safetensors"), "sampled_same", "--sampler", "cfg") == 0
    sampled = (tmp_path / "sampled" / "0000_seed0.png").read_bytes()
    assert sampled == (tmp_path / "sampled_same" / "0000_seed0.png").read_bytes()


def test_samplers_get_the_ti_negative_as_their_base(tmp_path, tiny):
    from renegx.samplers import load_sampling_model

    path = TextualInversion([_randn(3, TINY_HIDDEN)]).save(tmp_path / "t.safetensors")
    model = load_sampling_model("tiny", backbone=tiny)
    negative = resolve_negative(f"ti:{path}", model)
    base = negative.sampler_base("a cat")
    assert isinstance(base, NegativeEmbedding)
    torch.testing.assert_close(base.embeds, resolve_negative(f"ti:{path}", tiny).embedding.embeds)


def test_the_sdxl_sampler_adapter_encodes_a_pair_as_the_backbone_does(tiny_sdxl):
    from renegx.samplers import load_sampling_model

    inversion = TextualInversion([_randn(2, TINY_HIDDEN), _randn(2, TINY_HIDDEN, seed=1)])
    with torch.random.fork_rng():
        adapter = load_sampling_model("tiny-sdxl")
    through_adapter, through_backbone = inversion.negative(adapter), inversion.negative(tiny_sdxl)
    torch.testing.assert_close(through_adapter.embeds, through_backbone.embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(through_adapter.pooled, through_backbone.pooled, rtol=0, atol=1e-6)


def test_evaluate_compares_a_ti_negative(tmp_path):
    from renegx.evaluate.__main__ import evaluate_main

    (tmp_path / "prompts.txt").write_text("a cat\na dog\n")
    ti_path = TextualInversion([_randn(3, TINY_HIDDEN)]).save(tmp_path / "easynegative.safetensors")
    argv = ["--model", "tiny", "--benchmark", str(tmp_path / "prompts.txt"), "--judges", "clip"]
    argv += ["--judge-opt", "model=tiny", "--steps", "1", "--bootstrap", "20", "--out", str(tmp_path / "out")]
    assert evaluate_main([*argv, "--negatives", f"null,ti:{ti_path}"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["negatives"] == {"null": "null", "ti-easynegative": f"ti:{ti_path}"}
    sidecar = json.loads(
        (tmp_path / "out" / "seed0" / "ti-easynegative" / "prompts" / "00001.json").read_text()
    )
    assert sidecar["negative"]["kind"] == "ti" and sidecar["negative"]["vectors"] == 3


def test_the_evaluator_names_ti_negatives():
    from renegx.evaluate.settings import label_negatives, split_negatives

    specs = split_negatives("null,ti:easynegative.safetensors,ti:bad_prompt.pt,learned.safetensors")
    assert specs == ["null", "ti:easynegative.safetensors", "ti:bad_prompt.pt", "learned.safetensors"]
    assert label_negatives(specs) == {
        "null": "null",
        "ti-easynegative": "ti:easynegative.safetensors",
        "ti-bad_prompt": "ti:bad_prompt.pt",
        "learned": "learned.safetensors",
    }
    assert split_negatives("text:blurry, ugly,ti:x.pt") == ["text:blurry, ugly", "ti:x.pt"]


def test_the_toy_world_ships_a_textual_inversion_negative(tiny):
    from renegx.models import load_backbone
    from renegx.toyworld.ti_defects import SHIPPED, TI_RECIPE

    inversion = TextualInversion.load(SHIPPED)
    assert (inversion.layout, inversion.count) == ("a1111-safetensors", TI_RECIPE["vectors"])
    assert json.loads(inversion.metadata["recipe"]) == TI_RECIPE and inversion.metadata["base_model"] == "toy"
    toy = load_backbone("toy")
    negative = resolve_negative(f"ti:{SHIPPED}", toy).embedding
    assert negative.embeds.shape == (1, 77, toy.hidden_size) and torch.isfinite(negative.embeds).all()
    assert not torch.allclose(negative.embeds, toy.null_embedding())
    assert_one_line_error(
        TextualInversionError,
        lambda: inversion.negative(tiny),
        "model 'tiny' has clip_text_model/h32",
        "it was made for model 'toy' (pass --model toy)",
    )


def test_textual_inversion_training_moves_the_vectors_from_their_initialisation(one_thread):
    from renegx.models import load_backbone
    from renegx.toyworld.ti_defects import TI_RECIPE, learn

    toy = load_backbone("toy")
    inversion = learn({**TI_RECIPE, "pictures": 32, "steps": 2, "batch": 4})
    star = toy.text_encoder.get_input_embeddings().weight[toy.tokenizer("*").input_ids[1]]
    assert inversion.count == TI_RECIPE["vectors"] and not torch.allclose(inversion.vectors[0][0], star)
    assert json.loads(inversion.metadata["recipe"])["steps"] == 2
