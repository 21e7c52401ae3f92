"""SD3/SD3.5 training with a pooled negative, on `tiny-sd3`: encoding and the null as the pipeline makes them,
the guided Euler rollout equal to `StableDiffusion3Pipeline`, x̂0 from the velocity, gradients into the
negative only, and the exported file in `for_pipeline`, infer, evaluate, per-prompt and the samplers."""

import json

import pytest
import torch
from builders import (
    assert_pooled_file_draws_as_by_hand,
    quiet_backbone,
    quiet_pipeline,
    random_pooled_negative,
    run_card_snippet,
    seeded_module,
)
from diffusers import FlowMatchEulerDiscreteScheduler

from renegx.cli import infer_main, train_main
from renegx.evaluate.__main__ import evaluate_main
from renegx.guidance import guided_output, one_step_x0, rollout_to
from renegx.models import ModelError, family_of, load_backbone
from renegx.models.sd3 import SD3Backbone
from renegx.models.sdxl import pack_conditioning
from renegx.negatives.bank import EmbeddingBank
from renegx.negatives.embedding import EmbeddingError, NegativeEmbedding
from renegx.rewards import ClipScore
from renegx.samplers import build_sampler, load_sampling_model
from renegx.samplers.doubles import FixedCaptioner, ScriptedOracle, ScriptedVerifier
from renegx.train.callbacks import export_embedding
from renegx.train.module import ReNegModule

STEPS, SCALE = 6, 4.5
PROMPTS = ["a red circle", "a blue square on grass"]
ROWS, WIDTH, POOLED = 77 + 256, 96, 64  # tiny-sd3: CLIP-L ‖ CLIP-G (32 + 32) padded to T5's 96


@pytest.fixture(scope="module")
def backbone():
    return quiet_backbone("tiny-sd3")


@pytest.fixture(scope="module")
def pipe(backbone):
    return quiet_pipeline(backbone)


@pytest.fixture(scope="module")
def module():
    return seeded_module("tiny-sd3", num_inference_steps=STEPS, stop_steps=3, guidance_scale=SCALE)


def _negative(seed=0):
    return random_pooled_negative(ROWS, WIDTH, POOLED, seed)


def _encoded(pipe, prompts):
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        prompts, None, None, device="cpu", do_classifier_free_guidance=True
    )
    return embeds, pooled, negative[:1], negative_pooled[:1]


def test_tiny_sd3_encodes_and_nulls_as_the_pipeline(backbone, pipe):
    assert isinstance(backbone, SD3Backbone) and family_of("tiny-sd3").scheduler == "flow"
    assert (backbone.hidden_size, backbone.sequence_length, backbone.pooled_size) == (WIDTH, ROWS, POOLED)
    assert backbone.latent_shape == (16, 8, 8) and backbone.vae.config.shift_factor == 0.0609
    embeds, pooled, empty, empty_pooled = _encoded(pipe, PROMPTS)
    assert embeds.shape == (2, ROWS, WIDTH) and pooled.shape == (2, POOLED)
    assert torch.allclose(backbone.encode_prompts(PROMPTS), pack_conditioning(embeds, pooled), atol=1e-6)
    # The null, and the learned negative's start: E(""), as the pipeline encodes its default negative.
    null_embeds, null_pooled = backbone.negative_parts(backbone.null_embedding())
    assert torch.allclose(null_embeds, empty, atol=1e-6) and torch.allclose(
        null_pooled, empty_pooled, atol=1e-6
    )
    with pytest.raises(ModelError, match="prediction_type 'epsilon' does not apply"):
        load_backbone("tiny-sd3", prediction_type="epsilon")


def test_training_rollout_equals_the_sd3_pipeline(backbone, pipe):
    """The no-grad guided rollout (here all STEPS steps) with a learned negative and the pipeline with
    `negative_prompt_embeds`/`negative_pooled_prompt_embeds` draw the same latents: max difference 0 (the same
    batched calls in the same order)."""
    embeds, pooled = _negative()
    latents = torch.randn(2, *backbone.latent_shape, generator=torch.Generator().manual_seed(3))
    prompt_embeds, prompt_pooled, _, _ = _encoded(pipe, PROMPTS)
    expected = pipe(
        prompt_embeds=prompt_embeds,
        pooled_prompt_embeds=prompt_pooled,
        negative_prompt_embeds=embeds.expand(2, -1, -1),
        negative_pooled_prompt_embeds=pooled.expand(2, -1),
        latents=latents.clone(),
        num_inference_steps=STEPS,
        guidance_scale=SCALE,
        output_type="latent",
    ).images
    negative, prompts = pack_conditioning(embeds, pooled), pack_conditioning(prompt_embeds, prompt_pooled)
    ours = rollout_to(backbone.unet, backbone.schedule(STEPS), latents, negative, prompts, SCALE, STEPS)
    assert (ours - expected).abs().max() == 0


def test_one_step_x0_is_the_latent_minus_sigma_times_the_guided_velocity(backbone, pipe):
    embeds, pooled = _negative()
    latents = torch.randn(2, *backbone.latent_shape, generator=torch.Generator().manual_seed(4))
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(backbone.scheduler.config)
    scheduler.set_timesteps(STEPS)
    index = STEPS - 2
    prompt_embeds, prompt_pooled, _, _ = _encoded(pipe, PROMPTS)

    def velocity(hidden, text_embeds):
        timestep = scheduler.timesteps[index].expand(2)
        out = pipe.transformer(
            latents, encoder_hidden_states=hidden, pooled_projections=text_embeds, timestep=timestep
        )
        return out.sample

    with torch.no_grad():
        guided = guided_output(
            velocity(embeds.expand(2, -1, -1), pooled.expand(2, -1)),
            velocity(prompt_embeds, prompt_pooled),
            SCALE,
        )
    expected = latents - scheduler.sigmas[index] * guided
    negative, prompts = pack_conditioning(embeds, pooled), pack_conditioning(prompt_embeds, prompt_pooled)
    ours = one_step_x0(backbone.unet, backbone.schedule(STEPS), latents, index, negative, prompts, SCALE)
    assert torch.allclose(ours, expected, atol=1e-5, rtol=0)


def test_training_step_grads_reach_the_negative_only(module):
    module.negative_embeds.grad = None
    torch.manual_seed(3)
    module.training_step({"prompts": PROMPTS, "indices": torch.arange(2)}, 0).backward()
    grad = module.negative_embeds.grad
    assert grad.shape == (1, ROWS + 1, WIDTH)
    assert grad[0, :77].abs().sum() > 0 and grad[0, 77:ROWS].abs().sum() > 0, "CLIP and T5 rows"
    assert grad[0, ROWS, :POOLED].abs().sum() > 0, "pooled vector"
    assert grad[0, ROWS, POOLED:].abs().sum() == 0, "padding of the pooled row"
    frozen = [p for name, p in module.named_parameters() if name != "negative_embeds"]
    assert frozen and all(not p.requires_grad and p.grad is None for p in frozen)


def test_bf16_and_checkpointing_keep_the_gradient():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = ReNegModule(
            reward=ClipScore(model="tiny"),
            model="tiny-sd3",
            num_inference_steps=4,
            stop_steps=2,
            guidance_scale=SCALE,
            frozen_dtype="bfloat16",
            gradient_checkpointing=True,
        )
    backbone = module.backbone
    assert backbone.unet.network.dtype == backbone.text_encoder_3.dtype == torch.bfloat16
    assert backbone.unet.network.is_gradient_checkpointing
    assert backbone.encode_prompts(PROMPTS).dtype == torch.float32
    latents = torch.randn(2, *backbone.latent_shape, generator=torch.Generator().manual_seed(0))
    loss, _ = module.step_loss(PROMPTS, latents, [3])
    loss.backward()
    assert module.negative_embeds.grad[0, ROWS, :POOLED].abs().sum() > 0


@pytest.fixture(scope="module")
def exported(module, tmp_path_factory):
    with torch.no_grad():
        module.negative_embeds.copy_(pack_conditioning(*_negative(seed=4)))
    return export_embedding(module, tmp_path_factory.mktemp("run"))


def test_exported_file_round_trips_into_the_pipeline(exported, pipe, monkeypatch):
    loaded = NegativeEmbedding.load(exported, hidden_size=WIDTH, seq_len=ROWS)
    embeds, pooled = _negative(seed=4)
    assert torch.equal(loaded.embeds, embeds) and torch.equal(loaded.pooled, pooled)
    assert (
        loaded.metadata["pipeline"] == "StableDiffusion3Pipeline"
        and loaded.metadata["prediction_type"] == "flow"
    )
    assert loaded.metadata["text_encoder_id"].endswith("+t5/h96/l2/v192")
    # The card's snippet, run as a user copies it, draws with the SD3 pipeline and the file.
    namespace = run_card_snippet(exported.parent, monkeypatch)
    assert type(namespace["pipe"]).__name__ == "StableDiffusion3Pipeline" and len(namespace["images"]) == 1
    assert_pooled_file_draws_as_by_hand(loaded, pipe, embeds, pooled, PROMPTS)
    wrong = NegativeEmbedding(embeds, torch.randn(1, 12), metadata=loaded.metadata)
    with pytest.raises(
        EmbeddingError, match="pooled size 12 does not match the pipeline's pooled projection size 64"
    ):
        wrong.for_pipeline(pipe, 1)


def test_infer_and_the_samplers_draw_with_the_file(exported, tmp_path):
    common = ["--negative", str(exported), "--prompt", PROMPTS[0], "--steps", "2"]  # --model from the file
    assert infer_main([*common, "--out", str(tmp_path / "pipeline")]) == 0
    assert infer_main([*common, "--sampler", "cfg", "--out", str(tmp_path / "cfg")]) == 0
    drawn = {
        name: json.loads((tmp_path / name / "0000_seed0.json").read_text()) for name in ("pipeline", "cfg")
    }
    assert drawn["pipeline"]["scheduler"] == drawn["cfg"]["scheduler"] == "FlowMatchEuler"
    assert drawn["cfg"]["negatives_per_step"][0]["base"] == "embedding" and drawn["cfg"]["nfe"] == 4
    assert (tmp_path / "pipeline" / "0000_seed0.png").read_bytes() == (
        tmp_path / "cfg" / "0000_seed0.png"
    ).read_bytes()
    with torch.random.fork_rng():
        model = load_sampling_model("tiny-sd3")
    doubles = {
        "dnp": {"captioner": FixedCaptioner("a blue square")},
        "vlm": {"oracle": ScriptedOracle([["cat"], ["dog"]])},
        "npc": {"verifier": ScriptedVerifier([0, 1]), "captioner": FixedCaptioner("a blue square")},
    }
    file = NegativeEmbedding.load(exported)
    for name in ("dnp", "answer", "vlm", "npc"):
        options = {"steps": 2, "guidance_scale": SCALE, **({"lookahead": 2} if name == "answer" else {})}
        result = build_sampler(name, model, options, **doubles.get(name, {})).sample(PROMPTS[0], 0, base=file)
        assert result.record.steps[-1]["base"].startswith("embedding"), name


def test_evaluate_and_per_prompt_take_the_file(exported, tmp_path):
    (tmp_path / "p.txt").write_text(PROMPTS[0] + "\n")
    argv = ["--model", "tiny-sd3", "--negatives", f"null,{exported}", "--benchmark", str(tmp_path / "p.txt"),
            "--judges", "clip", "--judge-opt", "model=tiny", "--steps", "2", "--bootstrap", "10",
            "--out", str(tmp_path / "eval")]  # fmt: skip
    assert evaluate_main(argv) == 0
    sidecars = [json.loads(p.read_text()) for p in (tmp_path / "eval").glob("seed*/*/*/*.json")]
    assert len(sidecars) == 2 and {s["scheduler"] for s in sidecars} == {"FlowMatchEuler"}
    config = tmp_path / "tiny_sd3.yaml"
    config.write_text(
        "model:\n  model: tiny-sd3\n  reward:\n    class_path: renegx.rewards.ClipScore\n"
        f"    init_args:\n      model: tiny\n  guidance_scale: {SCALE}\n  num_inference_steps: 3\n"
        "  stop_steps: 1\n  lr: 0.05\n"
    )
    bank = tmp_path / "bank.safetensors"
    argv = ["per-prompt", "--config", str(config), "--embedding", str(exported), "--prompts",
            str(tmp_path / "p.txt"), "--out", str(bank), "--max-steps", "1", "--patience", "1",
            "--eval-seeds", "0"]  # fmt: skip
    assert train_main(argv) == 0
    tuned = EmbeddingBank.load(bank, hidden_size=WIDTH, seq_len=ROWS)
    row = tuned.select([PROMPTS[0]])
    assert row.embeds.shape == (1, ROWS, WIDTH) and row.pooled.shape == (1, POOLED)
    assert torch.equal(tuned.fallback.pooled, _negative(seed=4)[1])  # the global file's pooled part
