"""guidance.py against diffusers' own DDIMScheduler and StableDiffusionPipeline, numerically."""

import pytest
import torch
from builders import assert_rollout_equals_pipeline, quiet_pipeline
from diffusers import DDIMScheduler

from renegx.guidance import (
    GuidanceError,
    ddim_schedule,
    ddim_step,
    guided_output,
    negative_start_index,
    one_step_x0,
    rollout_path,
    rollout_to,
)
from renegx.schedules import ScheduleError, predict_x0

STEPS = 10


def _inputs(backbone, batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, *backbone.latent_shape, generator=generator)
    negative = torch.randn(1, backbone.max_length, backbone.hidden_size, generator=generator)
    prompts = backbone.encode_prompts(["a red circle", "a blue square on grass"][:batch])
    return latents, negative, prompts


def _scheduler(backbone, **overrides):
    scheduler = DDIMScheduler.from_config({**backbone.scheduler.config, **overrides})
    scheduler.set_timesteps(STEPS)
    return scheduler


@pytest.mark.parametrize("backbone_name", ["tiny_backbone", "tiny_backbone_v"])
def test_full_rollout_equals_diffusers_pipeline(backbone_name, request):
    backbone = request.getfixturevalue(backbone_name)
    latents, negative, prompts = _inputs(backbone)
    assert_rollout_equals_pipeline(
        backbone,
        quiet_pipeline(backbone),
        latents,
        negative,
        prompts,
        STEPS,
        prompt_embeds=prompts,
        negative_prompt_embeds=negative.expand(2, -1, -1),
    )


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("clip_sample", [False, True])
def test_ddim_step_equals_scheduler_step(tiny_backbone, prediction_type, clip_sample):
    scheduler = _scheduler(tiny_backbone, prediction_type=prediction_type, clip_sample=clip_sample)
    schedule = ddim_schedule(scheduler, STEPS)
    generator = torch.Generator().manual_seed(1)
    for index in (0, 4, STEPS - 1):
        sample = torch.randn(2, 4, 8, 8, generator=generator) * 3
        output = torch.randn(2, 4, 8, 8, generator=generator)
        expected = scheduler.step(output, scheduler.timesteps[index], sample)
        prev, x0 = ddim_step(schedule, output, index, sample)
        assert torch.allclose(x0, expected.pred_original_sample, atol=1e-5)
        assert torch.allclose(prev, expected.prev_sample, atol=1e-5)


@pytest.mark.parametrize("backbone_name", ["tiny_backbone", "tiny_backbone_v"])
def test_one_step_x0_equals_scheduler_pred_original_sample(backbone_name, request):
    backbone = request.getfixturevalue(backbone_name)
    latents, negative, prompts = _inputs(backbone)
    scheduler = _scheduler(backbone)
    schedule = ddim_schedule(backbone.scheduler, STEPS)
    index = STEPS - 3
    timestep = scheduler.timesteps[index]
    with torch.no_grad():
        out_n = backbone.unet(latents, timestep, encoder_hidden_states=negative.expand(2, -1, -1)).sample
        out_c = backbone.unet(latents, timestep, encoder_hidden_states=prompts).sample
    expected = scheduler.step(guided_output(out_n, out_c, 7.5), timestep, latents).pred_original_sample
    ours = one_step_x0(backbone.unet, schedule, latents, index, negative, prompts, 7.5)
    assert torch.allclose(ours, expected, atol=1e-5)


def test_one_step_gradient_equals_fully_differentiated_cfg(tiny_backbone):
    """Running the prompt branch under no_grad loses nothing: the gradient equals batched CFG with grad."""
    latents, negative, prompts = _inputs(tiny_backbone)
    schedule = ddim_schedule(tiny_backbone.scheduler, STEPS)
    index = STEPS - 2
    weights = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))

    n_ours = negative.clone().requires_grad_(True)
    (
        one_step_x0(tiny_backbone.unet, schedule, latents, index, n_ours, prompts, 7.5) * weights
    ).sum().backward()

    n_ref = negative.clone().requires_grad_(True)
    timestep = schedule.timesteps[index]
    both = tiny_backbone.unet(
        torch.cat([latents, latents]),
        timestep,
        encoder_hidden_states=torch.cat([n_ref.expand(2, -1, -1), prompts]),
    ).sample
    out_n, out_c = both.chunk(2)
    alpha = schedule.alpha(int(timestep))
    (predict_x0(guided_output(out_n, out_c, 7.5), latents, alpha, "epsilon") * weights).sum().backward()

    assert n_ours.grad.abs().sum() > 0
    assert torch.allclose(n_ours.grad, n_ref.grad, rtol=1e-4, atol=1e-6)


def test_rollout_builds_no_graph(tiny_backbone):
    latents, negative, prompts = _inputs(tiny_backbone)
    schedule = ddim_schedule(tiny_backbone.scheduler, STEPS)
    out = rollout_to(tiny_backbone.unet, schedule, latents, negative.requires_grad_(True), prompts, 7.5, 3)
    assert not out.requires_grad and out.grad_fn is None


def test_rollout_to_zero_steps_is_identity(tiny_backbone):
    latents, negative, prompts = _inputs(tiny_backbone)
    schedule = ddim_schedule(tiny_backbone.scheduler, STEPS)
    assert torch.equal(rollout_to(tiny_backbone.unet, schedule, latents, negative, prompts, 7.5, 0), latents)


def test_a_negative_starts_where_the_samplers_window_starts():
    from renegx.samplers import Window

    for steps in (1, 7, 10, 20, 30):
        for fraction in (0.0, 0.1, 0.3, 1 / 3, 0.5, 0.65, 0.99):
            start = negative_start_index(steps, fraction)
            inside = [i for i in range(steps) if Window(fraction).contains(i, steps)]
            assert inside == list(range(start, steps)), (steps, fraction)
    with pytest.raises(GuidanceError, match=r"a negative's start must be a fraction in \[0, 1\), got 1"):
        negative_start_index(10, 1)


def test_an_early_negative_guides_the_steps_before_the_switch(tiny_backbone):
    latents, negative, prompts = _inputs(tiny_backbone)
    null = tiny_backbone.null_embedding()
    schedule = ddim_schedule(tiny_backbone.scheduler, STEPS)
    unet = tiny_backbone.unet
    halfway = rollout_to(unet, schedule, latents, null, prompts, 7.5, 4)
    expected = rollout_to(unet, schedule, halfway, negative, prompts, 7.5, STEPS, start_index=4)
    switched = rollout_to(
        unet, schedule, latents, negative, prompts, 7.5, STEPS, early_negative=null, negative_start=4
    )
    torch.testing.assert_close(switched, expected, atol=0, rtol=0)
    # a stop before the switch never meets the negative
    early = rollout_to(
        unet, schedule, latents, negative, prompts, 7.5, 3, early_negative=null, negative_start=4
    )
    torch.testing.assert_close(
        early, rollout_to(unet, schedule, latents, null, prompts, 7.5, 3), atol=0, rtol=0
    )


def test_schedule_matches_diffusers_timesteps(tiny_backbone):
    schedule = ddim_schedule(tiny_backbone.scheduler, 30)
    scheduler = DDIMScheduler.from_config(tiny_backbone.scheduler.config)
    scheduler.set_timesteps(30)
    assert torch.equal(schedule.timesteps, scheduler.timesteps)
    assert schedule.timesteps[-1].item() == 1  # SD's leading spacing with steps_offset=1


def test_bad_inputs_are_one_line_errors(tiny_backbone):
    latents, negative, prompts = _inputs(tiny_backbone)
    schedule = ddim_schedule(tiny_backbone.scheduler, STEPS)
    with pytest.raises(GuidanceError, match="outside the schedule of 10 steps"):
        rollout_to(tiny_backbone.unet, schedule, latents, negative, prompts, 7.5, STEPS + 1)
    with pytest.raises(ScheduleError, match="num_inference_steps must be >= 1"):
        ddim_schedule(tiny_backbone.scheduler, 0)
    with pytest.raises(ScheduleError, match="unknown prediction_type 'flow'"):
        predict_x0(latents, latents, torch.tensor(0.5), "flow")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_a_ddim_jump_lands_on_the_target_timestep_for_a_perfect_denoiser(tiny_backbone, prediction_type):
    """Given the true ε of x_a = √ᾱ_a x0 + √(1−ᾱ_a) ε, a DDIM step from any index to any later one is exact:
    √ᾱ_b x0 + √(1−ᾱ_b) ε — the property a coarse rollout relies on."""
    scheduler = _scheduler(tiny_backbone, prediction_type=prediction_type)
    schedule = ddim_schedule(scheduler, STEPS)
    generator = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(2, 2, 4, 8, 8, generator=generator)
    for index, to_index in ((0, 4), (2, 9), (5, STEPS)):
        alpha_a = schedule.alpha(schedule.timestep(index))
        x_a = alpha_a**0.5 * x0 + (1 - alpha_a) ** 0.5 * eps
        output = eps if prediction_type == "epsilon" else alpha_a**0.5 * eps - (1 - alpha_a) ** 0.5 * x0
        prev, _ = ddim_step(schedule, output, index, x_a, to_index)
        last = schedule.timestep(STEPS - 1) - schedule.step_ratio
        alpha_b = schedule.alpha(schedule.timestep(to_index) if to_index < STEPS else last)
        torch.testing.assert_close(prev, alpha_b**0.5 * x0 + (1 - alpha_b) ** 0.5 * eps, atol=1e-5, rtol=0)


def test_rollout_path_visits_about_one_index_in_stride_and_ends_on_the_stop():
    assert rollout_path(0, 13, 1) == list(range(14))
    assert rollout_path(0, 13, 4) == [0, 3, 6, 10, 13]
    assert rollout_path(2, 3, 8) == [2, 3]
    assert rollout_path(5, 5, 4) == [5]
    with pytest.raises(GuidanceError, match="stride must be >= 1"):
        rollout_path(0, 4, 0)


def test_a_strided_rollout_takes_fewer_unet_calls_to_the_same_timestep(tiny_backbone):
    latents, negative, prompts = _inputs(tiny_backbone)
    schedule = ddim_schedule(tiny_backbone.scheduler, STEPS)
    seen = []

    def counting(sample, timestep, **kwargs):
        seen.append(int(timestep))
        return tiny_backbone.unet(sample, timestep, **kwargs)

    counting.dtype = tiny_backbone.unet.dtype
    fine = rollout_to(counting, schedule, latents, negative, prompts, 7.5, 9)
    fine_calls, seen[:] = list(seen), []
    coarse = rollout_to(counting, schedule, latents, negative, prompts, 7.5, 9, stride=3)
    assert len(fine_calls) == 9 and seen == [schedule.timestep(i) for i in (0, 3, 6)]
    assert torch.equal(
        rollout_to(tiny_backbone.unet, schedule, latents, negative, prompts, 7.5, 9, stride=1), fine
    )
    # the same timestep by another path: close to the fine x_t, not equal to it
    assert not torch.equal(coarse, fine)
    assert (coarse - fine).norm() < 0.5 * (latents - fine).norm()
