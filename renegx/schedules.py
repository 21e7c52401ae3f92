"""The schedules every denoising loop steps over, training's rollouts and the samplers' alike: one contract.

A schedule is closed-form and stateless, so the same step can be taken inside a graph, in a side chain, or
many times without touching a diffusers scheduler. Both kinds offer:
- `kind` ("ddim" or "flow") and `len(schedule)`, the number of steps T;
- `timesteps` `(T,)`: what the network is called with at each index, on the device it runs on (`to`);
- `step(model_output, index, sample, to_index=None) -> (prev_sample, x̂0)`: to the next index, or a jump to
  any later one (`len(schedule)` is the end of the schedule);
- `x0(model_output, index, sample)`, `eps(model_output, index, sample)`: x̂0 (clamped as the scheduler's
  `clip_sample` says) and ε̂ of a model output; `output_for_x0(x0, index, sample)`, the output they invert.

`DDIMSchedule` is η = 0 DDIM as diffusers' `DDIMScheduler` (ε, v or sample prediction;
tests/test_guidance.py); `FlowSchedule` is rectified flow as `FlowMatchEulerDiscreteScheduler`
(`x_t = (1 − σ) x0 + σ ε`, velocity `v = ε − x0`, Euler steps `x + (σ_to − σ_i) v`; tests/test_schedules.py).
`ddim_schedule` and `flow_schedule` read them off any diffusers scheduler config.
Shapes: model outputs and samples `(B, C, h, w)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from renegx.errors import RenegxError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class ScheduleError(RenegxError):
    pass


def _unknown(prediction_type: str) -> ScheduleError:
    return ScheduleError(f"unknown prediction_type '{prediction_type}'; known: {', '.join(PREDICTION_TYPES)}")


def predict_x0(model_output, sample, alpha_prod_t, prediction_type: str) -> torch.Tensor:
    """x̂0 from a model output at ᾱ_t: ε: `(x − √(1−ᾱ) ε)/√ᾱ`; v: `√ᾱ x − √(1−ᾱ) v`; sample: the output."""
    if prediction_type == "epsilon":
        return (sample - (1 - alpha_prod_t) ** 0.5 * model_output) / alpha_prod_t**0.5
    if prediction_type == "v_prediction":
        return alpha_prod_t**0.5 * sample - (1 - alpha_prod_t) ** 0.5 * model_output
    if prediction_type == "sample":
        return model_output
    raise _unknown(prediction_type)


def predict_eps(model_output, sample, alpha_prod_t, prediction_type: str) -> torch.Tensor:
    """ε̂ from a model output at ᾱ_t (the direction a DDIM step keeps)."""
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":
        return alpha_prod_t**0.5 * model_output + (1 - alpha_prod_t) ** 0.5 * sample
    if prediction_type == "sample":
        return (sample - alpha_prod_t**0.5 * model_output) / (1 - alpha_prod_t) ** 0.5
    raise _unknown(prediction_type)


def output_for_x0(x0, sample, alpha_prod_t, prediction_type: str) -> torch.Tensor:
    """The model output at ᾱ_t that `predict_x0` reads as predicting `x0` from `sample`."""
    eps = (sample - alpha_prod_t**0.5 * x0) / (1 - alpha_prod_t) ** 0.5
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        return alpha_prod_t**0.5 * eps - (1 - alpha_prod_t) ** 0.5 * x0
    if prediction_type == "sample":
        return x0
    raise _unknown(prediction_type)


@dataclass(frozen=True)
class DDIMSchedule:
    """A deterministic (η = 0) DDIM run: its timesteps and the cumulative alphas.

    The tensors live where the UNet runs (`to`), so that no step copies a timestep from the host; the
    timesteps are also kept as Python ints (`timestep`), so that no step reads one back from the device.
    """

    timesteps: torch.Tensor  # (T,) long, descending
    alphas_cumprod: torch.Tensor  # (num_train_timesteps,)
    final_alpha_cumprod: torch.Tensor  # scalar: ᾱ used after the last step
    step_ratio: int  # num_train_timesteps // T
    prediction_type: str
    clip_sample_range: float | None  # clamp of x̂0, as the scheduler's `clip_sample`
    timestep_values: tuple[int, ...]  # `timesteps` on the host
    kind = "ddim"

    def __len__(self) -> int:
        return len(self.timestep_values)

    def timestep(self, index: int) -> int:
        return self.timestep_values[index]

    def alpha(self, timestep: int) -> torch.Tensor:
        """ᾱ at a timestep (not an index); before 0, the final ᾱ."""
        return self.alphas_cumprod[timestep] if timestep >= 0 else self.final_alpha_cumprod

    @property
    def device(self) -> torch.device:
        return self.timesteps.device

    def to(self, device: torch.device | str) -> DDIMSchedule:
        """The same schedule with its tensors on `device`."""
        return replace(
            self,
            timesteps=self.timesteps.to(device),
            alphas_cumprod=self.alphas_cumprod.to(device),
            final_alpha_cumprod=self.final_alpha_cumprod.to(device),
        )

    def _alpha_at(self, index: int) -> torch.Tensor:
        return self.alpha(self.timestep(index))

    def x0(self, model_output: torch.Tensor, index: int, sample: torch.Tensor) -> torch.Tensor:
        """x̂0 as `DDIMScheduler.step(...).pred_original_sample`: by the prediction type, then clamped to
        `clip_sample_range` when the scheduler asks for `clip_sample`."""
        x0 = predict_x0(model_output, sample, self._alpha_at(index), self.prediction_type)
        if self.clip_sample_range is None:
            return x0
        return x0.clamp(-self.clip_sample_range, self.clip_sample_range)

    def eps(self, model_output: torch.Tensor, index: int, sample: torch.Tensor) -> torch.Tensor:
        return predict_eps(model_output, sample, self._alpha_at(index), self.prediction_type)

    def output_for_x0(self, x0: torch.Tensor, index: int, sample: torch.Tensor) -> torch.Tensor:
        return output_for_x0(x0, sample, self._alpha_at(index), self.prediction_type)

    def step(
        self, model_output: torch.Tensor, index: int, sample: torch.Tensor, to_index: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One η = 0 DDIM step from `timesteps[index]` to `timesteps[to_index]` (default the next one);
        returns `(prev_sample, x̂0)`. A jump over several indices is the DDIM update between two timesteps
        of a coarser schedule."""
        to_index = index + 1 if to_index is None else to_index
        timestep = self.timestep(index)
        # diffusers' next timestep is always `t − step_ratio`; a jump lands on the target index's own timestep
        if to_index == index + 1:
            alpha_prev = self.alpha(timestep - self.step_ratio)
        elif to_index < len(self):
            alpha_prev = self.alpha(self.timestep(to_index))
        else:
            alpha_prev = self.alpha(self.timestep(len(self) - 1) - self.step_ratio)
        x0 = self.x0(model_output, index, sample)
        eps = self.eps(model_output, index, sample)
        prev = alpha_prev**0.5 * x0 + (1 - alpha_prev) ** 0.5 * eps
        return prev, x0


@dataclass(frozen=True)
class FlowSchedule:
    """Euler steps of a rectified-flow model over `sigmas` (T + 1, ending at 0) and `timesteps` (T,)."""

    sigmas: torch.Tensor
    timesteps: torch.Tensor
    kind = "flow"

    def __len__(self) -> int:
        return len(self.timesteps)

    @property
    def device(self) -> torch.device:
        return self.timesteps.device

    def to(self, device: torch.device | str) -> FlowSchedule:
        return replace(self, sigmas=self.sigmas.to(device), timesteps=self.timesteps.to(device))

    def x0(self, model_output: torch.Tensor, index: int, sample: torch.Tensor) -> torch.Tensor:
        """`x_t − σ_t v`: exact for `x_t = (1−σ) x0 + σ ε` and `v = ε − x0`."""
        return sample - self.sigmas[index] * model_output

    def eps(self, model_output: torch.Tensor, index: int, sample: torch.Tensor) -> torch.Tensor:
        """`x_t + (1 − σ_t) v`."""
        return sample + (1 - self.sigmas[index]) * model_output

    def output_for_x0(self, x0: torch.Tensor, index: int, sample: torch.Tensor) -> torch.Tensor:
        """`(x_t − x0) / σ_t`."""
        return (sample - x0) / self.sigmas[index]

    def step(
        self, model_output: torch.Tensor, index: int, sample: torch.Tensor, to_index: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`x + (σ_to − σ_i) v` in float32, cast back to the output's dtype (as the scheduler does)."""
        to_index = index + 1 if to_index is None else to_index
        delta = self.sigmas[to_index] - self.sigmas[index]
        prev = (sample.to(torch.float32) + delta * model_output).to(model_output.dtype)
        return prev, self.x0(model_output, index, sample)


def _check_steps(num_inference_steps: int) -> None:
    if num_inference_steps < 1:
        raise ScheduleError(f"num_inference_steps must be >= 1, got {num_inference_steps}")


def ddim_schedule(scheduler, num_inference_steps: int) -> DDIMSchedule:
    """Read a DDIM schedule off any diffusers scheduler config (via a fresh `DDIMScheduler`)."""
    from diffusers import DDIMScheduler

    _check_steps(num_inference_steps)
    ddim = DDIMScheduler.from_config(scheduler.config)
    if ddim.config.thresholding:
        raise ScheduleError("dynamic thresholding is not supported; set thresholding=False in the scheduler")
    if ddim.config.prediction_type not in PREDICTION_TYPES:
        raise _unknown(ddim.config.prediction_type)
    ddim.set_timesteps(num_inference_steps)
    return DDIMSchedule(
        timesteps=ddim.timesteps.clone(),
        alphas_cumprod=ddim.alphas_cumprod.clone(),
        final_alpha_cumprod=torch.as_tensor(ddim.final_alpha_cumprod),
        step_ratio=ddim.config.num_train_timesteps // num_inference_steps,
        prediction_type=ddim.config.prediction_type,
        clip_sample_range=ddim.config.clip_sample_range if ddim.config.clip_sample else None,
        timestep_values=tuple(ddim.timesteps.tolist()),
    )


def flow_schedule(
    scheduler,
    num_inference_steps: int,
    image_seq_len: int,
    device: torch.device | str | None = None,
    sigmas: Sequence[float] | None = None,
) -> FlowSchedule:
    """Read a flow-matching schedule off any diffusers scheduler config (via a fresh
    `FlowMatchEulerDiscreteScheduler`); `image_seq_len` (latent patches) sets the shift of a config with
    `use_dynamic_shifting`, as the SD3 and FLUX pipelines compute it. `sigmas`: the unshifted sigmas a
    pipeline hands the scheduler (FLUX's `linspace(1, 1/T, T)`), else the scheduler's own spacing (SD3's)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

    _check_steps(num_inference_steps)
    flow = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
    config, kwargs = flow.config, {}
    if config.get("use_dynamic_shifting", None):
        kwargs["mu"] = calculate_shift(
            image_seq_len,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.16),
        )
    if sigmas is not None:
        kwargs["sigmas"] = sigmas
    flow.set_timesteps(num_inference_steps, device=device, **kwargs)
    return FlowSchedule(flow.sigmas.clone(), flow.timesteps.clone())
