"""The guidance composer, the cfg/dnp/answer samplers and what every sampler shares (samplers.md §9)."""

import json
from types import SimpleNamespace

import pytest
import torch
from assertions import assert_estimate
from builders import quiet_pipeline
from diffusers import DDIMScheduler

from renegx.guidance import ddim_schedule, rollout_to
from renegx.negatives.embedding import NegativeEmbedding
from renegx.samplers import (
    SAMPLERS,
    Cond,
    GuidancePlan,
    Negative,
    SamplerError,
    Window,
    build_sampler,
    compose,
    dns,
)
from renegx.samplers.adapters import SDModel
from renegx.samplers.answer import AnswerSampler, answer_nfe
from renegx.samplers.cfg import CFGSampler
from renegx.samplers.dnp import DNPSampler, dns_chain
from renegx.samplers.doubles import FixedCaptioner, HashTextEmbedder, ScriptedOracle, ScriptedVerifier
from renegx.samplers.measure import RunResults, summarize
from renegx.samplers.nfe import NFECounter

PROMPT = "a red circle"
STEPS = 4


@pytest.fixture(scope="module")
def model(tiny_backbone):
    return SDModel(tiny_backbone)


@pytest.fixture(scope="module")
def learned(tiny_backbone):
    generator = torch.Generator().manual_seed(7)
    return torch.randn(1, tiny_backbone.max_length, tiny_backbone.hidden_size, generator=generator)


def _pipeline_latents(backbone, seed, steps=STEPS, guidance_scale=7.5, **kwargs):
    return quiet_pipeline(backbone)(
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
        **kwargs,
    ).images


def _outputs(seed=0, shape=(1, 4, 8, 8), count=4):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for _ in range(count)]


# --- composer ----------------------------------------------------------------------------------------------
def test_compose_without_extras_is_diffusers_cfg_expression():
    positive, base, _, _ = _outputs()
    assert torch.equal(compose(positive, base, 7.5), base + 7.5 * (positive - base))


def test_compose_is_linear_and_zero_weight_is_a_no_op():
    positive, base, first, second = _outputs(1)
    w, l1, l2 = 6.0, 1.5, -0.5
    expected = (1 - w + l1 + l2) * base + w * positive - l1 * first - l2 * second
    assert torch.allclose(compose(positive, base, w, [(l1, first), (l2, second)]), expected, atol=1e-5)
    assert torch.equal(compose(positive, base, w, [(0.0, first)]), compose(positive, base, w))


def test_dns_sign_flip_equals_swapped_cfg():
    positive, anchor, _, _ = _outputs(2)
    for scale in (1.0, 2.5, 7.5):
        swapped = positive + (scale + 1) * (anchor - positive)  # diffusers CFG, prompt and negative swapped
        assert torch.allclose(dns(positive, anchor, scale), swapped, atol=1e-5)


def test_windows_and_plan():
    assert Window().contains(0, 10) and Window().contains(9, 10)
    early = Window(0, 3, "step")
    assert [early.contains(i, 50) for i in (0, 2, 3)] == [True, True, False]
    late = Window.parse("0.5:1")
    assert [late.contains(i, 10) for i in (4, 5, 9)] == [False, True, True]
    assert Window.parse("0:3 steps") == early and Window.parse([0.2, 0.4]) == Window(0.2, 0.4)
    with pytest.raises(SamplerError, match="start < stop"):
        Window(0.5, 0.5)
    cond = Cond(torch.zeros(1, 2, 3))
    plan = GuidancePlan(
        base=Negative(cond, "base"),
        overrides=[Negative(cond, "early", window=early)],
        extras=[Negative(cond, "late", 2.0, late), Negative(cond, "off", 0.0)],
    )
    assert plan.at(0, 10)[0].label == "early" and plan.at(0, 10)[1] == []
    base, extras = plan.at(7, 10)
    assert base.label == "base" and [(e.label, w) for e, w in extras] == [("late", 2.0)]


def test_concatenated_negatives_of_unequal_length_run_as_split_forwards(model, tiny_backbone, learned):
    """Primitive C: a 154-token negative beside a 77-token prompt equals two reference UNet calls."""
    caption = Negative(model.encode(["a blurry photo"]), "caption")
    long_negative = Negative(Cond(learned), "embedding").concat(caption)
    assert long_negative.cond.seq_len == 2 * tiny_backbone.max_length
    schedule = model.schedule(STEPS)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    positive = model.encode([PROMPT])
    forwards = model.network.forwards
    out_n, out_c = model.denoise(latents, schedule, 1, [long_negative.cond, positive])
    assert model.network.forwards - forwards == 2
    timestep = schedule.timesteps[1]
    with torch.no_grad():
        ref_n = tiny_backbone.unet(latents, timestep, encoder_hidden_states=long_negative.cond.embeds).sample
        ref_c = tiny_backbone.unet(latents, timestep, encoder_hidden_states=positive.embeds).sample
    assert torch.equal(out_n, ref_n) and torch.equal(out_c, ref_c)


def test_nfe_counter_counts_batch_items():
    counter = NFECounter(torch.nn.Identity())
    counter(torch.zeros(2, 1))
    counter(torch.zeros(3, 1))
    assert (counter.nfe, counter.forwards) == (5, 2)


# --- cfg ---------------------------------------------------------------------------------------------------
def test_cfg_sampler_equals_diffusers_pipeline(model, tiny_backbone, learned):
    prompt_embeds = tiny_backbone.encode_prompts([PROMPT])
    cases = [
        (learned, {"negative_prompt_embeds": learned}),
        (None, {}),
        ("text:blurry, ugly", {"negative_prompt": "blurry, ugly"}),
    ]
    for base, kwargs in cases:
        result = CFGSampler(model, steps=STEPS).sample(PROMPT, 5, base=base)
        expected = _pipeline_latents(tiny_backbone, 5, prompt_embeds=prompt_embeds, **kwargs)
        assert torch.allclose(result.latents, expected, atol=1e-5, rtol=0), base
        assert result.record.nfe == 2 * STEPS
        assert result.image.shape == (1, 3, 64, 64) and 0 <= result.image.min() <= result.image.max() <= 1


def test_cfg_with_learned_base_equals_the_reneg_rollout(model, tiny_backbone, learned):
    result = CFGSampler(model, steps=STEPS, guidance_scale=5.0).sample(PROMPT, 2, base=learned)
    start = model.initial_latents(torch.Generator().manual_seed(2))
    schedule = ddim_schedule(tiny_backbone.scheduler, STEPS)
    prompt = tiny_backbone.encode_prompts([PROMPT])
    expected = rollout_to(tiny_backbone.unet, schedule, start, learned, prompt, 5.0, STEPS)
    assert torch.allclose(result.latents, expected, atol=1e-5, rtol=0)


def test_cfg_without_guidance_costs_one_call_per_step(model, tiny_backbone):
    result = CFGSampler(model, steps=STEPS, guidance_scale=1.0).sample(PROMPT, 0)
    expected = _pipeline_latents(tiny_backbone, 0, guidance_scale=1.0, prompt=PROMPT)
    assert result.record.nfe == STEPS and torch.allclose(result.latents, expected, atol=1e-5)


def test_windowed_negatives_apply_only_in_their_window(model):
    options = {
        "steps": 6,
        "base_window": "0.5:1",
        "negatives": [{"text": "blurry", "window": "0:2 steps", "form": "extra", "weight": 2.0}],
    }
    result = CFGSampler(model, options).sample(PROMPT, 0, base="text:watermark")
    steps = result.record.steps
    assert [s["base"] for s in steps] == ["null"] * 3 + ["text:watermark"] * 3
    assert [s["extras"] for s in steps[:3]] == [[{"negative": "text:blurry", "weight": 2.0}]] * 2 + [[]]
    assert result.record.nfe == 2 * 6 + 2  # the extra term costs one call in each of its 2 steps


def test_a_delayed_base_changes_the_result_and_a_full_window_does_not(model, learned):
    full = CFGSampler(model, steps=STEPS).sample(PROMPT, 0, base=learned).latents
    same = CFGSampler(model, steps=STEPS, base_window="0:1").sample(PROMPT, 0, base=learned).latents
    delayed = CFGSampler(model, steps=STEPS, base_window="0.5:1").sample(PROMPT, 0, base=learned).latents
    assert torch.equal(full, same) and not torch.allclose(full, delayed)


def test_a_file_that_acts_late_draws_the_same_in_the_sampler_the_pipeline_and_the_training_rollout(
    model, tiny_backbone, learned
):
    """`negative_from` recorded by training: the cfg sampler windows the base, `for_pipeline` swaps it in with
    a step-end callback, the training rollout switches from the null at the same index, all three equal."""
    steps, late = 6, NegativeEmbedding(learned, metadata={"negative_from": "0.5"})
    result = CFGSampler(model, steps=steps).sample(PROMPT, 3, base=late)
    assert [s["base"] for s in result.record.steps] == ["null"] * 3 + ["embedding"] * 3
    kwargs = late.for_pipeline(quiet_pipeline(tiny_backbone), 1)
    assert "negative_prompt_embeds" not in kwargs and kwargs["negative_prompt"] == [""]
    prompt_embeds = tiny_backbone.encode_prompts([PROMPT])
    piped = _pipeline_latents(tiny_backbone, 3, steps=steps, prompt_embeds=prompt_embeds, **kwargs)
    schedule = ddim_schedule(tiny_backbone.scheduler, steps)
    start, null = model.initial_latents(torch.Generator().manual_seed(3)), tiny_backbone.null_embedding()
    rolled = rollout_to(
        tiny_backbone.unet,
        schedule,
        start,
        learned,
        prompt_embeds,
        7.5,
        steps,
        early_negative=null,
        negative_start=3,
    )
    whole = CFGSampler(model, steps=steps).sample(PROMPT, 3, base=learned).latents
    assert torch.allclose(result.latents, piped, atol=1e-5, rtol=0)
    assert torch.allclose(result.latents, rolled, atol=1e-5, rtol=0)
    assert not torch.allclose(result.latents, whole, atol=1e-3)
    # an explicit base_window wins over the file's own
    full = CFGSampler(model, steps=steps, base_window="0:1").sample(PROMPT, 3, base=late).latents
    assert torch.allclose(full, whole, atol=1e-6)


# --- dnp ---------------------------------------------------------------------------------------------------
def test_dns_chain_equals_the_swapped_prompt_pipeline(model, tiny_backbone):
    scale = 3.0
    latents = model.initial_latents(torch.Generator().manual_seed(4))
    ours = dns_chain(model, model.encode([PROMPT]), model.null(), latents, model.schedule(STEPS), scale)
    expected = _pipeline_latents(
        tiny_backbone,
        4,
        guidance_scale=scale + 1,
        prompt_embeds=tiny_backbone.encode_prompts([""]),
        negative_prompt_embeds=tiny_backbone.encode_prompts([PROMPT]),
    )
    assert torch.allclose(ours, expected, atol=1e-5, rtol=0)


def test_dnp_captions_the_dns_sample_and_uses_the_caption(model, tiny_backbone, learned):
    captioner = FixedCaptioner("a blue square")
    result = DNPSampler(model, steps=STEPS, captioner=captioner).sample(PROMPT, 1)
    expected = _pipeline_latents(tiny_backbone, 1, prompt=PROMPT, negative_prompt="a blue square")
    assert torch.allclose(result.latents, expected, atol=1e-5, rtol=0)
    record = result.record
    assert record.nfe == 4 * STEPS and record.calls["captioner"] == 1 == captioner.calls
    assert record.details["dns"]["caption_as"] == "replace"
    assert {s["base"] for s in record.steps} == {"caption:a blue square"}

    joined = DNPSampler(model, steps=STEPS, captioner=captioner).sample(PROMPT, 1, base=learned).record
    assert {s["base"] for s in joined.steps} == {
        "embedding + caption:a blue square"
    } and joined.nfe == 4 * STEPS
    extra = DNPSampler(model, steps=STEPS, dns_steps=2, caption_as="extra", captioner=captioner)
    record = extra.sample(PROMPT, 1, base=learned).record
    assert record.nfe == 2 * 2 + 3 * STEPS and record.steps[0]["extras"][0]["weight"] == 6.5


def test_dnp_filters_the_prompts_own_words_out_of_the_caption_unless_asked(model):
    captioner = FixedCaptioner("green circles on grass")
    record = DNPSampler(model, steps=2, captioner=captioner).sample(PROMPT, 1).record
    assert record.details["dns"]["caption"] == "green on grass"
    assert {s["base"] for s in record.steps} == {"caption:green on grass"}
    kept = DNPSampler(model, steps=2, captioner=captioner, keep_prompt_words=True).sample(PROMPT, 1).record
    assert kept.details["dns"]["caption"] == "green circles on grass"


def test_dnp_seed_offset_changes_only_the_negative_sample(model):
    class Recording(FixedCaptioner):
        def caption(self, images):
            self.images = images
            return super().caption(images)

    first, second = Recording(), Recording()
    DNPSampler(model, steps=2, captioner=first).sample(PROMPT, 3)
    DNPSampler(model, steps=2, captioner=second, dns_seed_offset=1).sample(PROMPT, 3)
    assert not torch.allclose(first.images, second.images)


# --- answer ------------------------------------------------------------------------------------------------
def test_answer_with_k0_or_zero_scale_is_cfg_bit_for_bit(model, learned):
    cfg = CFGSampler(model, steps=STEPS).sample(PROMPT, 6, base=learned)
    for options in ({"lookahead": 0}, {"neg_scale": 0.0}, {"lookahead": 0, "neg_form": "replace_base"}):
        result = AnswerSampler(model, steps=STEPS, **options).sample(PROMPT, 6, base=learned)
        assert torch.equal(result.latents, cfg.latents), options
        assert result.record.nfe == 2 * STEPS
    full = AnswerSampler(model, steps=STEPS).sample(PROMPT, 6, base=learned)
    assert not torch.allclose(full.latents, cfg.latents)


class _ShrinkingNetwork(torch.nn.Module):
    """A stand-in denoiser (output = 0.1 · input) for counting calls over long schedules cheaply."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, sample, timestep, encoder_hidden_states):
        return SimpleNamespace(sample=0.1 * sample)


def test_answer_nfe_matches_the_formula(model, tiny_backbone, learned):
    assert answer_nfe(41, 5) == 390
    counting = SDModel(tiny_backbone)
    counting.network = NFECounter(_ShrinkingNetwork())
    result = AnswerSampler(counting, steps=41, lookahead=5).sample(
        PROMPT, 0
    )  # null base = null anchor: reuse
    assert result.record.nfe == 390
    assert counting.network.forwards == 41 + 154  # each pair (main, look-ahead) is one batched forward
    differing = AnswerSampler(model, steps=6, lookahead=3).sample(PROMPT, 0, base=learned)
    assert differing.record.nfe == answer_nfe(6, 3, anchor_is_base=False) == 12 + 2 * (2 * 4 + 1) + 6
    anchored = AnswerSampler(model, steps=6, lookahead=3, dns_anchor="base").sample(PROMPT, 0, base=learned)
    assert anchored.record.nfe == answer_nfe(6, 3)


@pytest.mark.parametrize("neg_form", ["extra_term", "replace_base"])
@pytest.mark.parametrize("neg_signal", ["x0_renoise", "eps_at_end"])
def test_answer_side_chains_never_touch_a_scheduler(
    model, tiny_backbone, learned, neg_form, neg_signal, monkeypatch
):
    before = {k: v for k, v in vars(tiny_backbone.scheduler).items() if k != "_internal_dict"}

    def refuse(*args, **kwargs):
        raise AssertionError("a sampler called a stateful scheduler's step")

    monkeypatch.setattr(DDIMScheduler, "step", refuse)
    sampler = AnswerSampler(model, steps=STEPS, lookahead=2, neg_form=neg_form, neg_signal=neg_signal)
    first = sampler.sample(PROMPT, 8, base=learned)
    second = sampler.sample(PROMPT, 8, base=learned)
    assert torch.equal(first.latents, second.latents)
    after = {k: v for k, v in vars(tiny_backbone.scheduler).items() if k != "_internal_dict"}
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]) if isinstance(value, torch.Tensor) else value == after[key], key
    if neg_form == "replace_base":
        assert first.record.steps[0]["base"].startswith("answer:dns") and first.record.steps[0]["extras"]


# --- every sampler -----------------------------------------------------------------------------------------
def _doubles():
    return {
        "dnp": {"captioner": FixedCaptioner("a blurry picture")},
        "answer": {},
        "cfg": {},
        "vlm": {"oracle": ScriptedOracle([["cat"], ["dog"]])},
        "npc": {
            "verifier": ScriptedVerifier([0, 0, 1], [0.2, 0.1, 0.9]),
            "captioner": FixedCaptioner("two blue squares on grass"),
            "text_embedder": HashTextEmbedder(),
        },
    }


def _options(name):
    own = {"answer": {"lookahead": 2}, "npc": {"candidates": 2}}
    return {"steps": 2, **own.get(name, {})}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_takes_a_learned_embedding_and_a_bank_row_and_is_deterministic(model, learned, name):
    bank = torch.cat([torch.zeros_like(learned), learned])  # (2, L, D): row 1 is the prompt's
    bank_row = NegativeEmbedding(bank[1:2], metadata={"kind": "bank"})  # what a bank's `select` returns
    results = {}
    for label, base in [("embedding", NegativeEmbedding(learned)), ("bank_row", bank_row)]:
        sampler = build_sampler(name, model, _options(name), **_doubles()[name])
        results[label] = sampler.sample(PROMPT, 11, base=base)
        record = results[label].record
        assert isinstance(record.nfe, int) and record.nfe >= 2 * 2 and record.seconds > 0
        assert record.steps and all(s["base"].startswith(("embedding", "answer")) for s in record.steps[:1])
        assert "vae_decode" in record.to_json()["external_calls"]
    assert torch.equal(results["embedding"].latents, results["bank_row"].latents)
    other_seed = build_sampler(name, model, _options(name), **_doubles()[name]).sample(
        PROMPT, 12, base=bank[1:2]
    )
    assert not torch.allclose(other_seed.latents, results["embedding"].latents)


def test_a_whole_bank_or_a_wrong_width_is_refused(model, learned):
    sampler = CFGSampler(model, steps=2)
    with pytest.raises(SamplerError, match="bank of 2 rows"):
        sampler.sample(PROMPT, 0, base=NegativeEmbedding(torch.cat([learned, learned])))
    with pytest.raises(SamplerError, match="hidden size 768"):
        sampler.sample(PROMPT, 0, base=torch.zeros(1, 77, 768))


def test_unknown_options_are_one_line_errors(model):
    with pytest.raises(SamplerError, match="unknown option"):
        build_sampler("cfg", model, {"stepz": 3})
    with pytest.raises(SamplerError, match="neg_form must be one of"):
        build_sampler("answer", model, {"neg_form": "both"})
    with pytest.raises(SamplerError, match="unknown sampler 'xyz'"):
        build_sampler("xyz", model)


def test_measurement_writes_every_mean_and_paired_difference_as_an_estimate_over_prompts():
    prompts, seeds = ["a red circle", "a red circle", "a blue square", "a blue square"], [0, 1, 0, 1]
    images = torch.linspace(0, 0.8, 4).view(4, 1, 1, 1).expand(4, 3, 2, 2)
    runs = {
        "cfg/null": RunResults(images, prompts, seeds, [2, 2, 2, 2], [1.0] * 4),
        "other": RunResults(images + 0.1, prompts, seeds, [4, 4, 4, 4], [3.0] * 4),
    }
    report = json.loads(
        json.dumps(summarize(runs, {"brightness": lambda x, _: x.mean((1, 2, 3))}, "cfg/null"))
    )
    other = report["other"]
    assert (other["nfe_ratio"], other["time_ratio"]) == (2.0, 3.0)
    for entry in (other["brightness"], report["cfg/null"]["brightness"]):
        assert_estimate(entry["mean"], n=2)  # two prompts resampled, each with both seeds
        assert_estimate(entry["minus_reference"], n=2)
    assert other["brightness"]["mean"]["value"] == pytest.approx(0.5)
    shift = other["brightness"]["minus_reference"]
    assert (shift["value"], shift["low"], shift["high"]) == pytest.approx((0.1, 0.1, 0.1))  # paired: exact
    assert report["cfg/null"]["brightness"]["minus_reference"]["value"] == 0.0
