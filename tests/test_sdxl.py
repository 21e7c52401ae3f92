"""SDXL training with a pooled negative, on a tiny SDXL built offline: packing, encoding as diffusers does,
guided DDIM equal to `StableDiffusionXLPipeline`, gradients into both parts, export, inference and evaluation.
"""

import json

import pytest
import torch
from builders import (
    assert_pooled_file_draws_as_by_hand,
    assert_rollout_equals_pipeline,
    quiet_backbone,
    quiet_pipeline,
    random_pooled_negative,
    run_card_snippet,
    seeded_module,
)
from diffusers import DDIMScheduler

from renegx.cli.infer import generate_from_args, parse_infer_args
from renegx.evaluate.__main__ import evaluate_main
from renegx.guidance import ddim_schedule, guided_output, one_step_x0
from renegx.models import load_backbone
from renegx.models.sdxl import SDXLBackbone, pack_conditioning, unpack_conditioning
from renegx.negatives.embedding import NegativeEmbedding
from renegx.rewards import ClipScore
from renegx.tiny import TINY_HIDDEN
from renegx.train.callbacks import export_embedding
from renegx.train.module import ReNegModule, TrainingConfigError

STEPS = 6
PROMPTS = ["a red circle", "a blue square on grass"]
WIDTH, POOLED = 2 * TINY_HIDDEN, TINY_HIDDEN


@pytest.fixture(scope="module")
def backbone():
    return quiet_backbone("tiny-sdxl")


@pytest.fixture(scope="module")
def pipe(backbone):
    return quiet_pipeline(backbone)


@pytest.fixture(scope="module")
def module():
    return seeded_module("tiny-sdxl", num_inference_steps=STEPS, stop_steps=3)


def _negative(seed=0):
    return random_pooled_negative(77, WIDTH, POOLED, seed)


def test_pack_and_unpack_are_inverse_and_pad_with_zeros():
    embeds, pooled = _negative()
    packed = pack_conditioning(embeds, pooled)
    assert packed.shape == (1, 78, WIDTH) and packed[0, 77, POOLED:].abs().sum() == 0
    back_embeds, back_pooled = unpack_conditioning(packed, POOLED)
    assert torch.equal(back_embeds, embeds) and torch.equal(back_pooled, pooled)


def test_family_is_read_from_the_name(backbone):
    assert isinstance(load_backbone("tiny-sdxl"), SDXLBackbone)
    assert not isinstance(load_backbone("tiny"), SDXLBackbone)
    assert backbone.hidden_size == WIDTH and backbone.pooled_size == POOLED


def test_prompts_are_encoded_as_the_pipeline_encodes_them(backbone, pipe):
    embeds, _, pooled, _ = pipe.encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=False)
    assert embeds.shape == (2, 77, WIDTH) and pooled.shape == (2, POOLED)
    # one prompt at a time (as the cache does) rounds like a batch of two up to float noise
    assert torch.allclose(backbone.encode_prompts(PROMPTS), pack_conditioning(embeds, pooled), atol=1e-6)


def test_null_is_zeros_and_the_init_is_configurable(backbone):
    assert torch.equal(backbone.null_embedding(), torch.zeros(1, 78, WIDTH))
    with torch.random.fork_rng():
        empty = ReNegModule(reward=ClipScore(model="tiny"), model="tiny-sdxl", negative_init="empty")
    assert torch.equal(empty.negative_embeds.detach(), backbone.encode_prompts([""]))
    assert torch.equal(empty.null_embeds, torch.zeros(1, 78, WIDTH))  # the baseline stays zeros
    with pytest.raises(
        TrainingConfigError, match="unknown negative_init 'ones'; known: baseline, empty, zeros"
    ):
        ReNegModule(reward=ClipScore(model="tiny"), model="tiny-sdxl", negative_init="ones")


def _latents(backbone, batch=2):
    return torch.randn(batch, *backbone.latent_shape, generator=torch.Generator().manual_seed(3))


def test_full_rollout_equals_the_sdxl_pipeline(backbone, pipe):
    embeds, pooled = _negative()
    latents = _latents(backbone)
    prompt_embeds, _, prompt_pooled, _ = pipe.encode_prompt(
        PROMPTS, device="cpu", do_classifier_free_guidance=False
    )
    assert_rollout_equals_pipeline(
        backbone,
        pipe,
        latents,
        pack_conditioning(embeds, pooled),
        pack_conditioning(prompt_embeds, prompt_pooled),
        STEPS,
        prompt_embeds=prompt_embeds,
        pooled_prompt_embeds=prompt_pooled,
        negative_prompt_embeds=embeds.expand(2, -1, -1),
        negative_pooled_prompt_embeds=pooled.expand(2, -1),
    )


def test_one_step_x0_equals_the_scheduler_with_added_conditions(backbone, pipe):
    embeds, pooled = _negative()
    latents = _latents(backbone)
    scheduler = DDIMScheduler.from_config(backbone.scheduler.config)
    scheduler.set_timesteps(STEPS)
    index = STEPS - 2
    timestep = scheduler.timesteps[index]
    prompt_embeds, _, prompt_pooled, _ = pipe.encode_prompt(
        PROMPTS, device="cpu", do_classifier_free_guidance=False
    )
    time_ids = torch.tensor([[64, 64, 0, 0, 64, 64]] * 2, dtype=torch.float32)

    def unet(hidden, text_embeds):
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
        return pipe.unet(latents, timestep, encoder_hidden_states=hidden, added_cond_kwargs=added).sample

    with torch.no_grad():
        out_n = unet(embeds.expand(2, -1, -1), pooled.expand(2, -1))
        out_c = unet(prompt_embeds, prompt_pooled)
    expected = scheduler.step(guided_output(out_n, out_c, 7.5), timestep, latents).pred_original_sample
    schedule = ddim_schedule(backbone.scheduler, STEPS)
    negative = pack_conditioning(embeds, pooled)
    prompts = pack_conditioning(prompt_embeds, prompt_pooled)
    ours = one_step_x0(backbone.unet, schedule, latents, index, negative, prompts, 7.5)
    assert torch.allclose(ours, expected, atol=1e-5, rtol=0)


def test_training_step_grads_reach_tokens_and_pooled_only(module):
    module.negative_embeds.grad = None
    torch.manual_seed(3)
    module.training_step({"prompts": PROMPTS, "indices": torch.arange(2)}, 0).backward()
    grad = module.negative_embeds.grad
    assert grad.shape == (1, 78, WIDTH)
    assert grad[0, :77].abs().sum() > 0, "token rows"
    assert grad[0, 77, :POOLED].abs().sum() > 0, "pooled vector"
    assert grad[0, 77, POOLED:].abs().sum() == 0, "padding of the pooled row"
    frozen = [p for name, p in module.named_parameters() if name != "negative_embeds"]
    assert frozen and all(p.grad is None for p in frozen)


def test_memory_options_keep_the_gradient():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = ReNegModule(
            reward=ClipScore(model="tiny"),
            model="tiny-sdxl",
            num_inference_steps=4,
            stop_steps=2,
            frozen_dtype="bfloat16",
            gradient_checkpointing=True,
        )
    assert module.backbone.unet.unet.dtype == torch.bfloat16
    assert module.backbone.unet.unet.is_gradient_checkpointing
    loss, _ = module.step_loss(PROMPTS, _latents(module.backbone), [3])
    loss.backward()
    assert module.negative_embeds.grad[0, 77, :POOLED].abs().sum() > 0


def test_exported_file_round_trips_into_the_pipeline(module, pipe, tmp_path, monkeypatch):
    with torch.no_grad():
        module.negative_embeds.copy_(pack_conditioning(*_negative(seed=4)))
    path = export_embedding(module, tmp_path)
    loaded = NegativeEmbedding.load(path, hidden_size=WIDTH, seq_len=77)
    embeds, pooled = _negative(seed=4)
    assert torch.equal(loaded.embeds, embeds) and torch.equal(loaded.pooled, pooled)
    assert loaded.metadata["pipeline"] == "StableDiffusionXLPipeline"
    assert loaded.metadata["text_encoder_id"] == "clip_text_model/h32/l2/v514+clip_text_model/h32/l2/v514"
    assert loaded.metadata["negative_init"] == "baseline"
    # The card's snippet, run as a user copies it, draws with the SDXL pipeline and the file.
    namespace = run_card_snippet(tmp_path, monkeypatch)
    assert type(namespace["pipe"]).__name__ == "StableDiffusionXLPipeline" and len(namespace["images"]) == 1
    assert_pooled_file_draws_as_by_hand(loaded, pipe, embeds, pooled, PROMPTS)


def test_infer_draws_sdxl_with_the_file(module, tmp_path):
    path = export_embedding(module, tmp_path / "run")
    args = parse_infer_args(
        ["--model", "tiny-sdxl", "--negative", str(path), "--prompt", PROMPTS[0], "--steps", "2",
         "--out", str(tmp_path / "out")]
    )  # fmt: skip
    written = generate_from_args(args)
    sidecar = json.loads(written[0].with_suffix(".json").read_text())
    assert sidecar["negative"]["metadata"]["pipeline"] == "StableDiffusionXLPipeline"
    assert sidecar["height"] == 64


def test_evaluate_draws_sdxl_with_the_file(module, tmp_path):
    path = export_embedding(module, tmp_path / "run")
    (tmp_path / "p.txt").write_text(PROMPTS[0] + "\n")
    argv = ["--model", "tiny-sdxl", "--negatives", f"null,{path}", "--benchmark", str(tmp_path / "p.txt"),
            "--judges", "clip", "--judge-opt", "model=tiny", "--steps", "2", "--bootstrap", "10",
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert evaluate_main(argv) == 0
    sidecars = sorted((tmp_path / "out").glob("seed*/*/*/*.json"))
    assert len(sidecars) == 2
    for sidecar in map(json.loads, (p.read_text() for p in sidecars)):
        assert sidecar["model"] == "tiny-sdxl" and sidecar["scheduler"] == "DDIM" and sidecar["height"] == 64
