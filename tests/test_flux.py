"""FLUX.1 on `tiny-flux`: true CFG from any negative equals `FluxPipeline(true_cfg_scale=w)`, NPC's FLUX
window equals diffusers drawing it in two parts, and every sampler runs on it."""

import json

import numpy as np
import pytest
import torch
from assertions import assert_one_line_error
from diffusers import FlowMatchEulerDiscreteScheduler

from renegx.cli import infer_main
from renegx.configs import path_of
from renegx.models import ModelError, family_of, load_backbone
from renegx.negatives.embedding import EmbeddingError, NegativeEmbedding
from renegx.samplers import build_sampler, load_sampling_model
from renegx.samplers.adapters import FluxModel
from renegx.samplers.answer import answer_nfe
from renegx.samplers.cfg import CFGSampler
from renegx.samplers.config import load_sampler_config
from renegx.samplers.doubles import FixedCaptioner, HashTextEmbedder, ScriptedOracle, ScriptedVerifier
from renegx.samplers.npc import NPCSampler

PROMPT = "two red circles"
STEPS = 3
SCALE = 4.0  # true CFG


@pytest.fixture(scope="module")
def model():
    with torch.random.fork_rng():
        return load_sampling_model("tiny-flux")


@pytest.fixture(scope="module")
def learned(model):
    """A random negative of FLUX's shape: T5 rows `(1, 512, D)` and CLIP-L's pooled `(1, P)`."""
    generator = torch.Generator().manual_seed(5)
    null = model.null()
    return NegativeEmbedding(
        torch.randn(null.embeds.shape, generator=generator),
        torch.randn(null.pooled.shape, generator=generator),
    )


def _diffusers_latents(model, seed: int, steps: int = STEPS, **kwargs) -> torch.Tensor:
    """FluxPipeline's final latents, unpacked to `(1, C, h, w)` as the samplers keep them."""
    pipe, side = model.pipe, model.default_size
    generator = torch.Generator().manual_seed(seed)
    packed = pipe(num_inference_steps=steps, generator=generator, output_type="latent", **kwargs).images
    return pipe._unpack_latents(packed, side, side, pipe.vae_scale_factor)


def test_tiny_flux_is_flux_in_the_real_layout(model, tmp_path):
    family, pipe = family_of("tiny-flux"), model.pipe
    assert isinstance(model, FluxModel) and model.spec is family and family.builtin
    assert (family.scheduler, family.pipeline, family.negative.pooled) == ("flow", "FluxPipeline", True)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    assert family_of(str(tmp_path)).name == "flux"
    prompt = model.encode([PROMPT])
    t5_width, clip_width = pipe.text_encoder_2.config.d_model, pipe.text_encoder.config.hidden_size
    assert prompt.embeds.shape == (1, 512, t5_width) == (1, model.sequence_length, model.hidden_size)
    assert prompt.pooled.shape == (1, clip_width)
    assert pipe.transformer.config.guidance_embeds and model.guidance == 3.5
    assert pipe.transformer.config.in_channels == 4 * pipe.vae.config.latent_channels == 64
    assert model.initial_latents(torch.Generator().manual_seed(0)).shape == (1, 16, 8, 8)
    assert_one_line_error(ModelError, lambda: load_backbone("tiny-flux"), "draw it with --sampler")


@pytest.mark.parametrize("negative", ["learned", "null", "text", "none"])
def test_cfg_sampler_equals_flux_pipeline_true_cfg(model, learned, negative, monkeypatch):
    """Each negative as `FluxPipeline` takes it: embeddings, `negative_prompt=""`, a text, or none at all
    (`true_cfg_scale` 1: the prompt alone). Measured: at most 2.0e-6 on latents of magnitude up to 4.8, and 0
    without a negative."""
    prompt = model.encode([PROMPT])
    scale, base, kwargs = SCALE, None, {}
    if negative == "learned":
        base = learned
        kwargs = {"negative_prompt_embeds": learned.embeds, "negative_pooled_prompt_embeds": learned.pooled}
    elif negative == "null":
        kwargs = {"negative_prompt": ""}
    elif negative == "text":
        base, kwargs = "text:blurry, ugly", {"negative_prompt": "blurry, ugly"}
    else:
        scale = 1.0
    expected = _diffusers_latents(
        model,
        2,
        prompt_embeds=prompt.embeds,
        pooled_prompt_embeds=prompt.pooled,
        true_cfg_scale=scale,
        **kwargs,
    )

    def refuse(*args, **kwargs):
        raise AssertionError("a sampler called a stateful scheduler's step")

    monkeypatch.setattr(FlowMatchEulerDiscreteScheduler, "step", refuse)
    result = CFGSampler(model, steps=STEPS, guidance_scale=scale).sample(PROMPT, 2, base=base)
    assert (result.latents - expected).abs().max() < 1e-5
    assert result.record.nfe == (STEPS if negative == "none" else 2 * STEPS)


def test_for_pipeline_gives_flux_true_cfg_its_two_tensors(model, learned):
    pipe, prompt = model.pipe, model.encode([PROMPT])
    kwargs = learned.for_pipeline(pipe, 1)
    assert set(kwargs) == {"negative_prompt_embeds", "negative_pooled_prompt_embeds"}
    common = {"prompt_embeds": prompt.embeds, "pooled_prompt_embeds": prompt.pooled, "true_cfg_scale": SCALE}
    expected = _diffusers_latents(
        model,
        0,
        negative_prompt_embeds=learned.embeds,
        negative_pooled_prompt_embeds=learned.pooled,
        **common,
    )
    assert torch.equal(_diffusers_latents(model, 0, **kwargs, **common), expected)
    with pytest.raises(
        EmbeddingError, match="pooled size 8 does not match the pipeline's pooled projection size 32"
    ):
        NegativeEmbedding(learned.embeds, torch.zeros(1, 8)).for_pipeline(pipe, 1)


def test_infer_draws_tiny_flux_with_a_learned_file(model, learned, tmp_path):
    path = tmp_path / "flux.safetensors"
    NegativeEmbedding(learned.embeds, learned.pooled, metadata={"base_model": "tiny-flux"}).save(path)
    out = tmp_path / "out"
    argv = ["--sampler", "cfg", "--negative", str(path), "--prompt", PROMPT, "--seeds", "3", "--steps", "2"]
    assert (
        infer_main([*argv, "--guidance-scale", str(SCALE), "--out", str(out)]) == 0
    )  # --model from the file
    sidecar = json.loads((out / "0000_seed3.json").read_text())
    assert (
        sidecar["model"] == "tiny-flux" and sidecar["scheduler"] == "FlowMatchEuler" and sidecar["nfe"] == 4
    )
    expected = model.pipe(
        PROMPT,
        negative_prompt_embeds=learned.embeds,
        negative_pooled_prompt_embeds=learned.pooled,
        true_cfg_scale=SCALE,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(3),
    ).images[0]
    from PIL import Image

    drawn = np.asarray(Image.open(out / "0000_seed3.png"), dtype=np.int16)
    assert np.abs(drawn - np.asarray(expected, dtype=np.int16)).max() <= 1  # 8-bit rounding
    code = infer_main(
        ["--model", "tiny-flux", "--prompt", PROMPT, "--steps", "2", "--out", str(tmp_path / "x")]
    )
    assert code != 0  # FLUX has no training backbone: its diffusers draw without --sampler is refused


def _doubles(name: str) -> dict:
    """Fresh test doubles for sampler `name` (a scripted one keeps its place in the script)."""
    doubles = {
        "dnp": lambda: {"captioner": FixedCaptioner("a blue square")},
        "vlm": lambda: {"oracle": ScriptedOracle([["cat"], ["dog"]])},
        "npc": lambda: {
            "verifier": ScriptedVerifier([0, 1]),
            "captioner": FixedCaptioner("a blue square"),
            "text_embedder": HashTextEmbedder(),
        },
    }
    return doubles.get(name, dict)()


@pytest.mark.parametrize("name", ["cfg", "dnp", "answer", "vlm", "npc"])
@pytest.mark.parametrize("base", ["null", "learned"])
def test_every_sampler_runs_on_tiny_flux(model, learned, name, base):
    options = {"steps": STEPS, "guidance_scale": SCALE, **({"lookahead": 2} if name == "answer" else {})}
    runs = []
    for _ in range(2):
        sampler = build_sampler(name, model, options, **_doubles(name))
        runs.append(sampler.sample(PROMPT, 1, base=learned if base == "learned" else None))
    first, second = runs
    assert torch.equal(first.latents, second.latents) and first.image.shape == (1, 3, 64, 64)
    label = first.record.steps[-1]["base"]
    assert label.startswith("embedding") if base == "learned" else "embedding" not in label
    cost = {
        "cfg": 2 * STEPS,
        "dnp": 4 * STEPS,
        "answer": answer_nfe(STEPS, 2, anchor_is_base=base == "null"),
        "vlm": 2 * STEPS,
        "npc": 4 * STEPS,  # a first draw and one regeneration, each 2 calls a step
    }
    assert first.record.nfe == cost[name]


def test_answer_without_lookahead_is_true_cfg_bit_for_bit(model, learned):
    cfg = CFGSampler(model, steps=STEPS, guidance_scale=SCALE).sample(PROMPT, 0, base=learned)
    answer = build_sampler("answer", model, {"steps": STEPS, "guidance_scale": SCALE, "lookahead": 0})
    assert torch.equal(answer.sample(PROMPT, 0, base=learned).latents, cfg.latents)


class OneCandidate:
    def propose(self, prompt, caption, reason, k):
        return ["blue square"]


def test_npc_flux_window_equals_diffusers_drawing_it_in_two_parts(model):
    """NPC's FLUX setting (samplers/npc_flux, on 4 steps with the window on the first 2): the
    first draw is FLUX's own, a candidate guides by true CFG in the window only, the prompt alone after it.
    diffusers draws the same: true CFG against the candidate for 2 steps, then no negative on the remaining
    sigmas from those latents."""
    name, options = load_sampler_config(path_of("samplers/npc_flux"))
    steps, scale = 4, options["guidance_scale"]
    options = {**options, "steps": steps, "window": "0:2 steps"}
    sampler = NPCSampler(
        model,
        options,
        verifier=ScriptedVerifier([0, 1]),
        captioner=FixedCaptioner("a blue square"),
        proposer=OneCandidate(),
    )
    result = sampler.sample(PROMPT, 7)
    attempts = result.record.details["npc"]["attempts"]
    assert name == "npc" and [a["nfe"] for a in attempts] == [steps, steps + 2]
    assert [s["base"] for s in result.record.steps] == ["candidate:blue square"] * 2 + [None] * 2
    assert result.record.details["npc"]["ranking_nfe"] == 0

    pipe, generator, kept = model.pipe, torch.Generator().manual_seed(7), {}

    def keep(pipe, index, timestep, tensors):
        if index == 1:
            kept["latents"] = tensors["latents"].clone()
        return {}

    common = {"prompt": PROMPT, "guidance_scale": 3.5, "output_type": "latent"}
    pipe(
        **common,
        negative_prompt="blue square",
        true_cfg_scale=scale,
        num_inference_steps=steps,
        generator=generator,
        callback_on_step_end=keep,
    )
    rest = list(np.linspace(1.0, 1 / steps, steps)[2:])
    packed = pipe(**common, latents=kept["latents"], sigmas=rest).images
    side = model.default_size
    expected = pipe._unpack_latents(packed, side, side, pipe.vae_scale_factor)
    assert (result.latents - expected).abs().max() < 1e-5


def test_npc_text_score_reads_flux_t5_states(model):
    pipe = model.pipe
    tokens = pipe.tokenizer_2(["three cats"], padding="max_length", max_length=512, return_tensors="pt")
    with torch.no_grad():
        hidden = pipe.text_encoder_2(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
    mask = tokens.attention_mask[..., None].float()
    expected = (hidden * mask).sum(1) / mask.sum(1)
    assert torch.allclose(model.text_features(["three cats"]), expected, atol=1e-6)
