"""Negatives learned as textual-inversion tokens (`model.space: tokens`): what trains, what the export holds,
and that every loader of the exported files draws what training drew."""

import json

import pytest
import torch
from assertions import assert_one_line_error
from safetensors.torch import load_file

from renegx.guidance import rollout_to
from renegx.negatives.spec import resolve_negative
from renegx.negatives.textual_inversion import DIFFUSERS_TOKEN, TextualInversion
from renegx.rewards import ClipScore
from renegx.train.callbacks import export_embedding
from renegx.train.module import ReNegModule, TrainingConfigError
from renegx.train.step import initial_latents

STEPS, W = 4, 7.5
PROMPT = "a red circle"


def _tokens_module(model: str = "tiny", **kwargs) -> ReNegModule:
    with torch.random.fork_rng():
        return ReNegModule(
            reward=ClipScore(model="tiny"),
            model=model,
            num_inference_steps=STEPS,
            stop_steps=2,
            **{"space": "tokens", "num_tokens": 3, **kwargs},
        )


def _moved(module: ReNegModule, seed: int = 0) -> ReNegModule:
    """The vectors pushed off their start, as training would, so that every check below can fail."""
    with torch.no_grad():
        noise = torch.randn(module.negative_tokens.shape, generator=torch.Generator().manual_seed(seed))
        module.negative_tokens.add_(noise * module.negative_tokens.std())
    return module


def _batch(prompts):
    return {"prompts": prompts, "indices": torch.arange(len(prompts))}


@pytest.mark.parametrize("model", ["tiny", "tiny-sdxl"])
def test_the_vectors_train_through_the_frozen_encoders_and_nothing_else_moves(model):
    module = _tokens_module(model)
    encoders = [encoder for _, encoder in module.backbone.named_children() if "text_encoder" in _]
    widths = [encoder.get_input_embeddings().embedding_dim for encoder in encoders]
    assert [name for name, p in module.named_parameters() if p.requires_grad] == ["negative_tokens"]
    assert module.negative_tokens.shape == (3, sum(widths))
    assert module.state_dict().keys() == {"negative_tokens"}
    frozen = {name: p.detach().clone() for name, p in module.backbone.named_parameters()}
    optimizer = torch.optim.AdamW([module.negative_tokens], lr=0.1)
    torch.manual_seed(3)
    before = module.learned_negative().detach().clone()
    module.training_step(_batch([PROMPT, "a blue square"]), 0).backward()
    grad = module.negative_tokens.grad
    for part in grad.split(widths, dim=1):  # SDXL: both encoders' vectors get a gradient
        assert part.abs().sum() > 0
    assert all(p.grad is None for p in module.backbone.parameters())
    optimizer.step()
    assert all(torch.equal(p, frozen[name]) for name, p in module.backbone.named_parameters())
    assert not torch.allclose(module.learned_negative(), before)


def test_tokens_start_as_the_padding_token_which_on_the_toy_encoder_is_the_empty_prompt():
    with torch.random.fork_rng():
        module = ReNegModule(reward=ClipScore(model="tiny"), model="toy", space="tokens", num_tokens=8)
    assert torch.equal(module.learned_negative().detach(), module.backbone.encode_prompts([""]))


def test_token_space_refusals_are_one_line():
    def refused(message, **kwargs):
        assert_one_line_error(TrainingConfigError, lambda: _tokens_module(**kwargs), message)

    refused("unknown model.space 'input'; known: output, tokens", space="input")
    refused("model.negative_init zeros is for model.space output", negative_init="zeros")
    refused("model.space tokens: ", num_tokens=76)
    refused("at most 75 fit in one 77-token encoding", num_tokens=76)


def _exported(module: ReNegModule, folder) -> dict[str, object]:
    export_embedding(module, folder)
    return {path.name: path for path in folder.iterdir()}


def test_the_export_holds_the_vectors_in_both_interface_layouts_with_their_provenance(tmp_path):
    module = _moved(_tokens_module(negative_from=0.5))
    files = _exported(module, tmp_path)
    assert {"negative.safetensors", "negative_ti.safetensors", "negative_learned_embeds.safetensors"} <= set(
        files
    )
    a1111 = TextualInversion.load(files["negative_ti.safetensors"])
    assert a1111.layout == "a1111-safetensors" and torch.equal(a1111.vectors[0], module.negative_tokens)
    assert load_file(files["negative_learned_embeds.safetensors"]).keys() == {DIFFUSERS_TOKEN}
    metadata = a1111.metadata
    assert (metadata["trained_in"], metadata["num_tokens"], metadata["base_model"]) == ("tokens", "3", "tiny")
    assert metadata["negative_from"] == "0.5" and "from the first step" in metadata["drawn_by_interfaces"]
    # The ti: negative is what the frozen encoder makes of the vectors: the output-space file's rows.
    embedding = resolve_negative(f"ti:{files['negative_ti.safetensors']}", module.backbone).embedding
    torch.testing.assert_close(embedding.embeds, module.learned_negative().detach(), rtol=0, atol=1e-6)


def _training_latents(module: ReNegModule, x_T: torch.Tensor) -> torch.Tensor:
    """What the run draws from `x_T` with its negative (the rollout of the training step, run to the end)."""
    backbone = module.backbone
    with torch.no_grad():
        negative = module.learned_negative()
        embeds = backbone.encode_prompts([PROMPT])
        return rollout_to(backbone.unet, module.schedule, x_T, negative, embeds, W, STEPS)


def _pipeline_latents(pipe, x_T: torch.Tensor, **kwargs) -> torch.Tensor:
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    size = x_T.shape[-1] * pipe.vae_scale_factor
    out = pipe(
        PROMPT,
        num_inference_steps=STEPS,
        guidance_scale=W,
        latents=x_T.clone(),
        output_type="latent",
        height=size,
        width=size,
        **kwargs,
    )
    return out.images


@pytest.mark.slow
def test_diffusers_load_textual_inversion_draws_what_training_drew_on_the_toy_model(tmp_path):
    from diffusers import StableDiffusionPipeline

    from renegx.toyworld import generator_folder

    module = _moved(_tokens_module("toy", num_tokens=8))
    files = _exported(module, tmp_path)
    x_T = initial_latents(module.backbone, 1, torch.Generator().manual_seed(0), module.device)
    trained = _training_latents(module, x_T)
    pipe = StableDiffusionPipeline.from_pretrained(generator_folder(), safety_checker=None)
    for token, name in [
        ("<neg>", "negative_learned_embeds.safetensors"),
        ("<ti>", "negative_ti.safetensors"),
    ]:
        pipe.load_textual_inversion(str(files[name]), token=token)
        drawn = _pipeline_latents(pipe, x_T, negative_prompt=token)
        torch.testing.assert_close(drawn, trained, rtol=0, atol=1e-4)
    null = _pipeline_latents(pipe, x_T)
    assert (null - trained).abs().max() > 1e-2  # the negative drew something else than the null


@pytest.mark.slow
def test_diffusers_loads_the_sdxl_pair_and_draws_what_training_drew(tmp_path):
    from renegx.models import load_backbone

    module = _moved(_tokens_module("tiny-sdxl"))
    files = _exported(module, tmp_path)
    assert (
        "negative_learned_embeds.safetensors" not in files
    )  # diffusers reads the pair, one encoder at a time
    x_T = initial_latents(module.backbone, 1, torch.Generator().manual_seed(0), module.device)
    trained = _training_latents(module, x_T)
    with torch.random.fork_rng():
        pipe = load_backbone("tiny-sdxl").pipeline()  # a copy of the weights: loading changes the tokenizers
    pair = load_file(files["negative_ti.safetensors"])
    pipe.load_textual_inversion(
        pair["clip_l"], token="<neg>", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer
    )
    pipe.load_textual_inversion(
        pair["clip_g"], token="<neg>", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
    )
    drawn = _pipeline_latents(pipe, x_T, negative_prompt="<neg>")
    torch.testing.assert_close(drawn, trained, rtol=0, atol=1e-4)
    ti = resolve_negative(f"ti:{files['negative_ti.safetensors']}", module.backbone).embedding
    embeds, pooled = module.backbone.negative_parts(module.learned_negative().detach())
    torch.testing.assert_close(ti.embeds, embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(ti.pooled, pooled, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_invert_recovers_a_negative_that_tokens_can_express_and_names_what_they_cannot(tmp_path, capsys):
    """`renegx invert` on E(words): the words' own count of vectors comes near it on every row it can reach;
    the start token's row (0) stays the encoder's, so a target that moved it keeps that part as error."""
    from renegx.cli import main
    from renegx.models import load_backbone
    from renegx.negatives.embedding import NegativeEmbedding

    with torch.random.fork_rng():
        tiny = load_backbone("tiny")
    words = "a blurry ugly cat"
    count = len(tiny.tokenizer(words).input_ids) - 2
    target = tiny.encode_prompts([words])
    moved = target.clone()
    moved[:, 0] += 1.0
    metadata = {"base_model": "tiny", "negative_from": "0.5"}
    for name, embeds in [("words", target), ("moved", moved)]:
        NegativeEmbedding(embeds, metadata=metadata).save(tmp_path / f"{name}.safetensors")
        out = tmp_path / f"{name}_tokens.safetensors"
        argv = ["invert", str(tmp_path / f"{name}.safetensors"), "--tokens", str(count), "--out", str(out)]
        argv += ["--steps", "150"]
        assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"{tmp_path}/words_tokens_ti.safetensors" in printed and "row 0 (the start token's" in printed
    report = json.loads((tmp_path / "words_tokens_inversion.json").read_text())
    assert report["reachable_rows_relative"] < 0.05 and report["row0_mse"] == 0
    moved_report = json.loads((tmp_path / "moved_tokens_inversion.json").read_text())
    assert moved_report["row0_mse"] == pytest.approx(1.0) and moved_report["row0_share_of_error"] > 0.5
    inverted = NegativeEmbedding.load(tmp_path / "words_tokens.safetensors")
    assert inverted.negative_from == 0.5 and inverted.metadata["inverted_from"] == "words.safetensors"
    ti = resolve_negative(f"ti:{tmp_path / 'words_tokens_ti.safetensors'}", tiny).embedding
    torch.testing.assert_close(ti.embeds, inverted.embeds, rtol=0, atol=1e-6)
    assert (
        "from the first step"
        in TextualInversion.load(tmp_path / "words_tokens_ti.safetensors").metadata["drawn_by_interfaces"]
    )


def test_per_prompt_tuning_refuses_token_space_in_one_line(tmp_path, capsys):
    from renegx.cli import main
    from renegx.negatives.embedding import NegativeEmbedding

    NegativeEmbedding(torch.zeros(1, 77, 32), metadata={"base_model": "tiny"}).save(
        tmp_path / "g.safetensors"
    )
    (tmp_path / "prompts.txt").write_text("a cat\na dog\n")
    argv = ["per-prompt", "--config", "train/tiny", "--model.space", "tokens", "--embedding"]
    argv += [str(tmp_path / "g.safetensors"), "--prompts", str(tmp_path / "prompts.txt")]
    assert main([*argv, "--out", str(tmp_path / "bank.safetensors")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("renegx: error: per-prompt tuning tunes rows of the output space")
