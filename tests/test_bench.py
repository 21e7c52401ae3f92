"""The training-step benchmark and the speed/memory switches it measures (no timings are asserted)."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assertions import module_images  # noqa: E402

from bench import meters, step_paths, train_step  # noqa: E402
from bench.models import build_world  # noqa: E402
from renegx.guidance import ddim_schedule, rollout_to  # noqa: E402
from renegx.rewards import ClipScore  # noqa: E402
from renegx.train.compile_check import check_compiled_gradient  # noqa: E402
from renegx.train.module import ReNegModule, TrainingConfigError  # noqa: E402

SHORT = ["--num-inference-steps", "4", "--stop-steps", "2", "--batch-size", "2", "--threads", "1"]


@pytest.fixture(scope="module")
def world():
    return build_world("tiny", prompt_pool=4)


@pytest.fixture(scope="module")
def args():
    return train_step.parse_args([*SHORT, "--steps", "1", "--warmup", "0", "--multi-stop", "2"])


@pytest.fixture(scope="module")
def rnd(world, args):
    return train_step.draw_rounds(world, args, torch.device("cpu"))[0]


def _loss_and_grad(step, rnd, negative):
    with torch.no_grad():
        step.negative.copy_(negative)
    return step_paths.loss_and_grad(step, rnd)


@pytest.fixture(scope="module")
def reference(world, args, rnd):
    """renegx with the module's defaults: (step, loss, grad) at the null embedding."""
    step = step_paths.RenegxStep(world, args, torch.device("cpu"))
    null = step.module.null_embeds.clone()
    return step, null, *_loss_and_grad(step, rnd, null)


@pytest.mark.slow
def test_benchmark_runs_on_the_tiny_model_and_ends_with_the_speedup():
    lines = []
    speedup = train_step.main(
        [*SHORT, "--steps", "2", "--warmup", "0", "--ablate", "cache"], report=lines.append
    )
    assert lines[-1] == f"speedup_vs_naive: {speedup:.3f}" and speedup > 0
    text = "\n".join(lines)
    assert "renegx against the naive reference" in text and "prompt embeddings cached" in text
    assert text.count("ratio on/off over 2 rounds") == 2
    shares = [line for line in lines if line.startswith("no-grad UNet calls: off ")]
    assert len(shares) == 2
    assert all(0 < float(line.split("off ")[1].split("%")[0]) < 100 for line in shares)


def test_unknown_optimisation_is_refused():
    with pytest.raises(SystemExit, match="unknown optimisation"):
        train_step.main([*SHORT, "--ablate", "warp_drive"], report=lambda _: None)


def test_naive_reference_and_renegx_compute_the_same_loss_and_gradient(world, args, rnd, reference):
    _, null, loss, grad = reference
    for flags in ({}, {"cache_prompts": True, "positive_no_grad": True}):
        naive = step_paths.NaiveStep(world, args, torch.device("cpu"), **flags)
        assert torch.allclose(naive.negative, null)
        naive_loss, naive_grad = _loss_and_grad(naive, rnd, null)
        assert naive_loss == pytest.approx(loss, abs=1e-6)
        assert grad.abs().sum() > 0
        torch.testing.assert_close(naive_grad, grad, rtol=1e-4, atol=1e-5 * grad.abs().max().item())


def test_exact_switches_keep_loss_and_gradient(world, args, rnd, reference):
    _, null, loss, grad = reference
    step = step_paths.RenegxStep(
        world, args, torch.device("cpu"), attention="classic", channels_last=True, gradient_checkpointing=True
    )
    unet = step.module.backbone.unet
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert unet.is_gradient_checkpointing and step.module.backbone.vae.decoder.gradient_checkpointing
    switched_loss, switched_grad = _loss_and_grad(step, rnd, null)
    assert switched_loss == pytest.approx(loss, abs=1e-5)
    torch.testing.assert_close(switched_grad, grad, rtol=1e-3, atol=1e-4 * grad.abs().max().item())


def test_bf16_frozen_weights_keep_the_embedding_fp32_and_the_gradient_close(world, args, rnd, reference):
    _, null, loss, grad = reference
    step = step_paths.RenegxStep(world, args, torch.device("cpu"), frozen_dtype="bfloat16")
    backbone = step.module.backbone
    assert backbone.unet.dtype == backbone.vae.dtype == torch.bfloat16
    assert step.module.negative_embeds.dtype == backbone.text_encoder.dtype == torch.float32
    bf16_loss, bf16_grad = _loss_and_grad(step, rnd, null)
    assert bf16_grad.dtype == torch.float32
    assert bf16_loss == pytest.approx(loss, abs=2e-2)
    assert F.cosine_similarity(bf16_grad.flatten(), grad.flatten(), dim=0) > 0.98
    reference_step = reference[0]
    text, agree = step_paths.agreement(reference_step, step, rnd, exact=True)
    assert not agree and "MISMATCH" in text  # bf16 is not the same gradient, so an exact switch would be void
    assert step_paths.agreement(reference_step, step, rnd, exact=False)[1]
    assert step_paths.agreement(reference_step, reference_step, rnd, exact=True)[1]


def test_decode_at_reward_size_decodes_small_images(world, args, rnd):
    step = step_paths.RenegxStep(world, args, torch.device("cpu"), decode_at_reward_size=True)
    images = module_images(step.module, rnd.prompts, rnd.latents, rnd.stops[0])
    assert images.shape[-2:] == (world.reward.image_size,) * 2 and images.dtype == torch.float32
    full = step_paths.RenegxStep(world, args, torch.device("cpu"))
    assert module_images(full.module, rnd.prompts, rnd.latents, rnd.stops[0]).shape[-1] == 64


def test_shared_rollout_gradient_is_the_mean_of_the_single_stop_gradients(world, args, rnd, reference):
    single, null, *_ = reference
    stops = [2, 3]
    per_stop = [_loss_from(single.module, rnd, [stop], null) for stop in stops]
    shared = step_paths.RenegxStep(world, args, torch.device("cpu"), stops_per_rollout=2)
    loss, grad = _loss_from(shared.module, rnd, stops, null)
    assert loss == pytest.approx(sum(value for value, _ in per_stop) / 2, abs=1e-6)
    torch.testing.assert_close(grad, (per_stop[0][1] + per_stop[1][1]) / 2, rtol=1e-5, atol=1e-9)


def _loss_from(module, rnd, stops, negative):
    with torch.no_grad():
        module.negative_embeds.copy_(negative)
    module.negative_embeds.grad = None
    loss, rewards = module.step_loss(rnd.prompts, rnd.latents, stops)
    assert rewards.shape == (len(stops) * len(rnd.prompts),)
    loss.backward()
    grad = module.negative_embeds.grad.clone()
    module.negative_embeds.grad = None
    return loss.item(), grad


def test_rollout_resumes_from_a_start_index(tiny_backbone):
    schedule = ddim_schedule(tiny_backbone.scheduler, 6)
    latents = torch.randn(1, *tiny_backbone.latent_shape, generator=torch.Generator().manual_seed(0))
    negative, prompts = tiny_backbone.null_embedding(), tiny_backbone.encode_prompts(["a red circle"])
    whole = rollout_to(tiny_backbone.unet, schedule, latents, negative, prompts, 7.5, 4)
    part = rollout_to(tiny_backbone.unet, schedule, latents, negative, prompts, 7.5, 2)
    assert torch.equal(rollout_to(tiny_backbone.unet, schedule, part, negative, prompts, 7.5, 4, 2), whole)


def test_peak_meter_counts_new_tensors_until_they_are_freed():
    weights = torch.ones(1000)
    meter = meters.AllocatedPeak()
    with meter:
        view = weights[:10]  # a view of an older tensor allocates nothing
        first = torch.zeros(1000)
        second = first * 2
        del first, second
        third = weights + 1
    assert meter.peak == 2 * 4000 and meter.current == 4000
    assert view.shape == (10,) and third.shape == (1000,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"frozen_dtype": "float16"}, "unknown frozen_dtype 'float16'"),
        ({"attention": "flash"}, "unknown attention 'flash'"),
        ({"stops_per_rollout": 0}, "stops_per_rollout must be >= 1"),
    ],
)
def test_bad_speed_settings_are_refused(kwargs, message):
    with pytest.raises(TrainingConfigError, match=message):
        ReNegModule(reward=ClipScore(model="tiny"), **kwargs)


def test_compiled_gradient_check_passes_in_eager_mode_and_fails_on_a_different_gradient(reference, rnd):
    module = reference[0].module
    check_compiled_gradient(module, rnd.prompts)
    signs = iter([1.0, -1.0])
    original = module.step_loss

    def flipped(*args):
        loss, rewards = original(*args)
        return next(signs) * loss, rewards

    module.step_loss = flipped
    try:
        with pytest.raises(TrainingConfigError, match="compile=True gives a gradient that differs"):
            check_compiled_gradient(module, rnd.prompts)
    finally:
        del module.step_loss
