"""Where a negative that acts late starts, in ComfyUI's percent of the schedule.

renegx draws a file with `negative_from` f (docs/design.md, "A negative that acts late") with the null on
step indices `i < s` and the learned negative on `i >= s` of `T`, where `s = ⌈f·T⌉`
(`NegativeEmbedding.start_index`).
ComfyUI windows a conditioning by `start_percent` / `end_percent` (`ConditioningSetTimestepRange`); from its
`comfy/samplers.py` and `comfy/model_sampling.py`:

- before sampling, each percent becomes a noise level, `model_sampling.percent_to_sigma(percent)`,
  decreasing in the percent (`0` → above every sigma, `1` → 0);
- at each model call with noise level σ, an entry takes part iff
  `percent_to_sigma(end_percent) <= σ <= percent_to_sigma(start_percent)`;
- step `i` of a sampler that calls the model once per step does so at `sigmas[i]` of the schedule its
  `KSampler` computes (descending, `T + 1` values, the last where sampling ends).

So the null on `[0, p)` and the learned negative on `[p, 1]` split the steps exactly where
`sigmas[s] < percent_to_sigma(p) < sigmas[s - 1]`: both inequalities strict, since at equality both entries
would take part. `start_percent` puts that noise level a tenth of the way from `sigmas[s]` up to
`sigmas[s - 1]` (in log σ): a margin far above float32 rounding, and below the points a sampler that calls the
model more than once per step evaluates inside step `s - 1` (midpoints, a third, two thirds), which thus get
the null like the rest of their step."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import PackError

BISECTIONS = 64  # halvings of [0, 1]: far below the float32 spacing of ComfyUI's sigmas
ABOVE_START = 0.1  # where the switch lies between sigmas[s] (0) and sigmas[s - 1] (1), in log σ


@dataclass(frozen=True)
class Schedule:
    """The noise levels a ComfyUI sampler calls the model at, and the model's percent → noise level map.

    sigmas: `(T + 1,)` descending; the model is called at the first `T` (one call per step), the last is
    where sampling ends. percent_to_sigma: the model's `model_sampling.percent_to_sigma`. label: how the
    schedule was made, for messages (`"20 steps, euler, normal"`).
    """

    sigmas: Sequence[float]
    percent_to_sigma: Callable[[float], float]
    label: str

    @property
    def num_steps(self) -> int:
        return len(self.sigmas) - 1


def start_percent(schedule: Schedule, start: int) -> float:
    """`p` in (0, 1) such that the steps `i >= start` of `schedule` lie below `percent_to_sigma(p)` and the
    steps before it above it, strictly on both sides (`0 < start < T`)."""
    if not 0 < start < schedule.num_steps:
        raise PackError(f"a window must start inside the {schedule.num_steps} steps, got step {start}")
    above, below = float(schedule.sigmas[start - 1]), float(schedule.sigmas[start])
    if not above > below:
        raise PackError(
            f"the schedule ({schedule.label}) does not descend at step {start} "
            f"(sigma {above:g} then {below:g}): no percent falls between them"
        )
    target = below * (above / below) ** ABOVE_START if below > 0 else above * ABOVE_START
    low, high = 0.0, 1.0  # percent_to_sigma(low) > target >= percent_to_sigma(high)
    for _ in range(BISECTIONS):
        middle = (low + high) / 2
        if schedule.percent_to_sigma(middle) > target:
            low = middle
        else:
            high = middle
    for percent in (high, low):
        if below < schedule.percent_to_sigma(percent) < above:
            return percent
    raise PackError(
        f"no percent maps between sigma {above:g} and {below:g} "
        f"(steps {start - 1} and {start}, {schedule.label})"
    )
