"""The schedules' one contract: flow matching against diffusers' FlowMatchEulerDiscreteScheduler, and the
x̂0 / ε / output conversions of both kinds (DDIM against DDIMScheduler is in tests/test_guidance.py)."""

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from renegx.schedules import (
    DDIMSchedule,
    FlowSchedule,
    ScheduleError,
    ddim_schedule,
    flow_schedule,
    output_for_x0,
    predict_x0,
)

STEPS = 5


def _randn(*shape, seed=0, count=2):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for _ in range(count)]


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_steps_equal_the_scheduler_step(shift):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    schedule = flow_schedule(scheduler, STEPS, image_seq_len=16)
    scheduler.set_timesteps(STEPS)
    assert torch.equal(schedule.timesteps, scheduler.timesteps) and torch.equal(
        schedule.sigmas, scheduler.sigmas
    )
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    for index, timestep in enumerate(scheduler.timesteps):
        velocity = torch.randn(1, 4, 8, 8, generator=generator)
        expected = scheduler.step(velocity, timestep, sample).prev_sample
        ours, x0 = schedule.step(velocity, index, sample)
        assert torch.equal(ours, expected)
        assert torch.allclose(x0, sample - scheduler.sigmas[index] * velocity)
        sample = expected


def test_dynamic_shifting_reads_the_shift_off_the_image_size():
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    small, large = (flow_schedule(scheduler, STEPS, image_seq_len=n) for n in (256, 4096))
    assert small.sigmas[0] == large.sigmas[0] == 1 and small.sigmas[-1] == large.sigmas[-1] == 0
    assert (large.sigmas[1:-1] > small.sigmas[1:-1]).all()  # a larger picture stays noisier for longer


def test_flow_conversions_are_exact_for_the_true_velocity_and_a_jump_lands_on_its_sigma():
    """`x_t = (1 − σ) x0 + σ ε`, `v = ε − x0`: x̂0, ε̂ and the output for x0 are exact, and an Euler step
    from any index to any later one lands on the straight path."""
    x0, noise = _randn(1, 4, 8, 8)
    sigmas = torch.tensor([1.0, 0.7, 0.3, 0.0])
    schedule = FlowSchedule(sigmas, sigmas[:-1] * 1000)
    assert schedule.kind == "flow" and len(schedule) == 3
    velocity = noise - x0
    for index in range(3):
        sample = (1 - sigmas[index]) * x0 + sigmas[index] * noise
        torch.testing.assert_close(schedule.x0(velocity, index, sample), x0)
        torch.testing.assert_close(schedule.eps(velocity, index, sample), noise)
        torch.testing.assert_close(schedule.output_for_x0(x0, index, sample), velocity)
        for to_index in range(index + 1, 4):
            prev, _ = schedule.step(velocity, index, sample, to_index)
            torch.testing.assert_close(prev, (1 - sigmas[to_index]) * x0 + sigmas[to_index] * noise)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_output_for_x0_inverts_x0_and_eps_is_the_steps_direction(prediction_type):
    scheduler = DDIMScheduler(prediction_type=prediction_type, clip_sample=False)
    schedule = ddim_schedule(scheduler, STEPS)
    assert isinstance(schedule, DDIMSchedule) and schedule.kind == "ddim"
    x0, sample = _randn(1, 4, 8, 8, seed=3)
    alpha = torch.tensor(0.3)
    output = output_for_x0(x0, sample, alpha, prediction_type)
    torch.testing.assert_close(predict_x0(output, sample, alpha, prediction_type), x0)
    for index in range(STEPS):
        output = schedule.output_for_x0(x0, index, sample)
        torch.testing.assert_close(schedule.x0(output, index, sample), x0, atol=1e-4, rtol=1e-4)
        prev, _ = schedule.step(output, index, sample)
        alpha_prev = schedule.alpha(schedule.timestep(index) - schedule.step_ratio)
        expected = alpha_prev**0.5 * x0 + (1 - alpha_prev) ** 0.5 * schedule.eps(output, index, sample)
        torch.testing.assert_close(prev, expected, atol=1e-4, rtol=1e-4)


def test_the_schedules_move_to_a_device():
    ddim = ddim_schedule(DDIMScheduler(), STEPS).to("meta")
    flow = flow_schedule(FlowMatchEulerDiscreteScheduler(), STEPS, image_seq_len=16).to("meta")
    assert ddim.device.type == flow.device.type == flow.sigmas.device.type == "meta"


def test_bad_schedules_are_one_line_errors():
    with pytest.raises(ScheduleError, match="num_inference_steps must be >= 1"):
        flow_schedule(FlowMatchEulerDiscreteScheduler(), 0, image_seq_len=16)
    with pytest.raises(ScheduleError, match="dynamic thresholding is not supported"):
        ddim_schedule(DDIMScheduler(thresholding=True), STEPS)
