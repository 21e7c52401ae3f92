"""SDXL (pooled embeddings, zero null) and SD3-style flow matching, on tiny pipelines built offline."""

import pytest
import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    StableDiffusion3Pipeline,
    StableDiffusionXLPipeline,
)

from renegx.negatives.embedding import NegativeEmbedding
from renegx.samplers import SamplerError, build_sampler, sampling_model
from renegx.samplers.adapters import SD3Model, SDXLModel
from renegx.samplers.answer import AnswerSampler
from renegx.samplers.cfg import CFGSampler
from renegx.samplers.doubles import FixedCaptioner, ScriptedOracle
from renegx.samplers.vlm import VLMSampler
from renegx.tiny.sd3 import TINY_SD3_T5_WIDTH, tiny_sd3_components

PROMPT = "a red circle"
STEPS = 3
SEQ = 8  # SD3's T5 slots (zeros without a T5 encoder), kept short for speed


@pytest.fixture(scope="module")
def sdxl_pipe():
    from renegx.tiny.sdxl import tiny_sdxl_components

    pipe = StableDiffusionXLPipeline(**tiny_sdxl_components())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd3_pipe():
    """`tiny-sd3` without its T5 encoder: the pipeline fills T5's slots with zeros."""
    with torch.random.fork_rng():
        components = tiny_sd3_components()
    pipe = StableDiffusion3Pipeline(**components | {"text_encoder_3": None, "tokenizer_3": None})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _random_negative(model, seed=5):
    generator = torch.Generator().manual_seed(seed)
    null = model.null()
    embeds = torch.randn(null.embeds.shape, generator=generator)
    return embeds, torch.randn(null.pooled.shape, generator=generator)


def _drawn_by_pipeline(pipe, prompt, embeds, pooled, guidance_scale: float, seed: int):
    """The latents `pipe` draws from `seed` with the encoded `prompt` and a pooled negative."""
    return pipe(
        prompt_embeds=prompt.embeds,
        pooled_prompt_embeds=prompt.pooled,
        negative_prompt_embeds=embeds,
        negative_pooled_prompt_embeds=pooled,
        num_inference_steps=STEPS,
        guidance_scale=guidance_scale,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
    ).images


# --- SDXL --------------------------------------------------------------------------------------------------
def test_sdxl_cfg_sampler_equals_the_diffusers_pipeline(sdxl_pipe):
    model = sampling_model(sdxl_pipe)
    assert isinstance(model, SDXLModel) and model.hidden_size == 64
    prompt = model.encode([PROMPT])
    embeds, pooled = _random_negative(model)
    result = CFGSampler(model, steps=STEPS).sample(PROMPT, 3, base=NegativeEmbedding(embeds, pooled))
    expected = _drawn_by_pipeline(sdxl_pipe, prompt, embeds, pooled, 7.5, 3)  # SDXL's pipeline defaults to 5
    assert torch.allclose(result.latents, expected, atol=1e-5, rtol=0)
    side = sdxl_pipe.unet.config.sample_size * sdxl_pipe.vae_scale_factor
    assert result.record.nfe == 2 * STEPS and result.image.shape == (1, 3, side, side)


def test_sdxl_null_is_zeros_as_in_diffusers(sdxl_pipe):
    model = sampling_model(sdxl_pipe)
    null = model.null()
    assert not null.embeds.any() and not null.pooled.any()
    result = CFGSampler(model, steps=STEPS).sample(PROMPT, 4)
    expected = sdxl_pipe(
        PROMPT,
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        generator=torch.Generator().manual_seed(4),
        output_type="latent",
    ).images
    assert torch.allclose(result.latents, expected, atol=1e-5, rtol=0)


def test_sdxl_base_needs_pooled_embeddings(sdxl_pipe):
    model = sampling_model(sdxl_pipe)
    embeds, _ = _random_negative(model)
    with pytest.raises(SamplerError, match="needs pooled embeddings"):
        CFGSampler(model, steps=STEPS).sample(PROMPT, 0, base=embeds)


@pytest.mark.parametrize("name", ["dnp", "answer", "vlm"])
def test_sdxl_adaptive_samplers_take_a_learned_base(sdxl_pipe, name):
    model = sampling_model(sdxl_pipe)
    embeds, pooled = _random_negative(model)
    external = {
        "dnp": {"captioner": FixedCaptioner("a blue square")},
        "vlm": {"oracle": ScriptedOracle([["cat"]])},
    }
    options = {"steps": STEPS, **({"lookahead": 2} if name == "answer" else {})}
    sampler = build_sampler(name, model, options, **external.get(name, {}))
    first = sampler.sample(PROMPT, 1, base=NegativeEmbedding(embeds, pooled))
    second = sampler.sample(PROMPT, 1, base=NegativeEmbedding(embeds, pooled))
    assert torch.equal(first.latents, second.latents) and first.record.steps[0]["base"].startswith(
        "embedding"
    )


# --- SD3 / flow matching -----------------------------------------------------------------------------------
def test_sd3_cfg_sampler_equals_the_diffusers_pipeline(sd3_pipe, monkeypatch):
    model = SD3Model(sd3_pipe, max_sequence_length=SEQ)
    prompt = model.encode([PROMPT])
    assert prompt.embeds.shape == (1, 77 + SEQ, TINY_SD3_T5_WIDTH) and prompt.pooled.shape == (1, 64)
    embeds, pooled = _random_negative(model)
    expected = _drawn_by_pipeline(sd3_pipe, prompt, embeds, pooled, 4.5, 2)

    def refuse(*args, **kwargs):
        raise AssertionError("a sampler called a stateful scheduler's step")

    monkeypatch.setattr(FlowMatchEulerDiscreteScheduler, "step", refuse)
    step_index = sd3_pipe.scheduler.step_index
    sampler = CFGSampler(model, steps=STEPS, guidance_scale=4.5)
    result = sampler.sample(PROMPT, 2, base=NegativeEmbedding(embeds, pooled))
    assert torch.allclose(result.latents, expected, atol=1e-5, rtol=0)
    assert sd3_pipe.scheduler.step_index == step_index and result.record.nfe == 2 * STEPS
    null_result = sampler.sample(PROMPT, 2)
    assert null_result.record.steps[0]["base"] == "null" and torch.equal(
        model.null().embeds, model.encode([""]).embeds
    )


def test_sd3_vlm_shows_the_oracle_the_chosen_x0_form(sd3_pipe):
    model = SD3Model(sd3_pipe, max_sequence_length=SEQ)

    class Seeing(ScriptedOracle):
        def ask(self, image, question, top_k=1):
            self.images = [*getattr(self, "images", []), image]
            return super().ask(image, question, top_k)

    seen = {}
    for mode in ("paper", "repo"):
        oracle = Seeing([["cat"], ["dog"]])
        record = VLMSampler(model, steps=STEPS, x0_mode=mode, oracle=oracle).sample(PROMPT, 0).record
        assert record.details["vlm"]["negative_set"] == ["cat", "dog"] and record.nfe == 2 * STEPS
        seen[mode] = oracle.images
    assert torch.equal(seen["paper"][0], seen["repo"][0])  # σ = 1 at the first step: both forms agree
    assert not torch.allclose(seen["paper"][1], seen["repo"][1])


def test_answer_runs_on_flow_models_and_is_cfg_without_lookahead(sd3_pipe):
    model = SD3Model(sd3_pipe, max_sequence_length=SEQ)
    cfg = CFGSampler(model, steps=STEPS, guidance_scale=4.5).sample(PROMPT, 0)
    plain = AnswerSampler(model, steps=STEPS, guidance_scale=4.5, lookahead=0).sample(PROMPT, 0)
    adaptive = AnswerSampler(model, steps=STEPS, guidance_scale=4.5, lookahead=2).sample(PROMPT, 0)
    assert torch.equal(plain.latents, cfg.latents) and not torch.allclose(adaptive.latents, cfg.latents)
