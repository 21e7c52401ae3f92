"""The one guidance composer every sampler shares, and the negatives it composes.

Per step, with model outputs `out_c` (prompt), `out_base` (base negative) and `out_j` (extra negatives):

    ε̃ = out_base + w (out_c − out_base) − Σ_j λ_j(t) (out_j − out_base)

The outputs are whatever the network predicts (ε, v or a flow velocity); the formula is linear in all of them.
Samplers differ only in which base and extras they hand to the composer at each step:
- a `Negative` is a conditioning (`Cond`) with a label for the record, a weight λ (for extra terms) and a
  `Window` of steps where it is in effect;
- a `GuidancePlan` holds the base, base overrides (a windowed negative that *replaces* the base, e.g. a
  caption concatenated to a learned embedding for the first steps only) and extra terms.
Outside every window the base is the plan's `base`; an extra term outside its window costs no network call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from renegx.errors import RenegxError
from renegx.guidance import guided_output


class SamplerError(RenegxError):
    """A sampler option, negative or model that cannot be used as asked; the message is one line."""


def check_choice(name: str, value, choices) -> None:
    """Raise a one-line `SamplerError` unless `value` is one of `choices`."""
    if value not in choices:
        raise SamplerError(f"{name} must be one of {', '.join(map(str, choices))}, got '{value}'")


@dataclass(frozen=True)
class Cond:
    """One conditioning of the denoiser.

    embeds: `(B | 1, L, D)` text-encoder outputs (a row of 1 is broadcast to the batch).
    pooled: `(B | 1, P)` pooled text embeddings for models that take them (SDXL, SD3), else None.
    """

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None

    @property
    def seq_len(self) -> int:
        return self.embeds.shape[1]

    def rows(self, batch_size: int) -> Cond:
        """This conditioning with `batch_size` rows (a single row repeated; B rows kept as they are)."""
        if self.embeds.shape[0] not in (1, batch_size):
            raise SamplerError(
                f"a conditioning of {self.embeds.shape[0]} rows cannot serve a batch of {batch_size}"
            )
        pooled = None if self.pooled is None else self.pooled.expand(batch_size, -1)
        return Cond(self.embeds.expand(batch_size, -1, -1), pooled)

    def concat(self, *others: Cond) -> Cond:
        """Sequence concatenation `[self; others...]` (primitive C); the pooled vector stays this one's."""
        for other in others:
            if other.embeds.shape[2] != self.embeds.shape[2]:
                raise SamplerError(
                    f"cannot concatenate negatives of hidden size {self.embeds.shape[2]} "
                    f"and {other.embeds.shape[2]}"
                )
        embeds = torch.cat([self.embeds, *(o.embeds.to(self.embeds) for o in others)], dim=1)
        return Cond(embeds, self.pooled)


@dataclass(frozen=True)
class Window:
    """The steps `[start, stop)` of a schedule where a negative is in effect.

    unit "fraction": step index `i` of `T` is inside when `start <= i / T < stop` (default: every step);
    unit "step": inside when `start <= i < stop` (e.g. NPC's first three steps: `Window(0, 3, "step")`).
    """

    start: float = 0.0
    stop: float = 1.0
    unit: str = "fraction"

    def __post_init__(self) -> None:
        if self.unit not in ("fraction", "step"):
            raise SamplerError(f"window unit must be 'fraction' or 'step', got '{self.unit}'")
        if not self.start < self.stop:
            raise SamplerError(f"a window needs start < stop, got [{self.start}, {self.stop})")
        if self.unit == "fraction" and not (0 <= self.start and self.stop <= 1):
            raise SamplerError(f"a fraction window must lie in [0, 1], got [{self.start}, {self.stop})")

    def contains(self, index: int, num_steps: int) -> bool:
        position = index / num_steps if self.unit == "fraction" else index
        return self.start <= position < self.stop

    @property
    def is_full(self) -> bool:
        return self.unit == "fraction" and self.start == 0 and self.stop == 1

    def describe(self) -> str:
        return f"[{self.start:g}, {self.stop:g})" + (" steps" if self.unit == "step" else "")

    @classmethod
    def parse(cls, value) -> Window:
        """A `Window`, None (full), `[start, stop]` fractions, `{start, stop, unit}`, "a:b" or "a:b steps"."""
        if value is None:
            return cls()
        if isinstance(value, Window):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {"start", "stop", "unit"}
            if unknown:
                known = "start, stop, unit"
                raise SamplerError(f"unknown window keys: {', '.join(sorted(unknown))} (known: {known})")
            return cls(**value)
        if isinstance(value, str):
            text, unit = value.strip(), "fraction"
            if text.endswith("steps"):
                text, unit = text[: -len("steps")].strip(), "step"
            parts = text.split(":")
            if len(parts) == 2:
                try:
                    return cls(float(parts[0]), float(parts[1]), unit)
                except ValueError:
                    pass
        elif isinstance(value, (list, tuple)) and len(value) == 2:
            return cls(float(value[0]), float(value[1]))
        raise SamplerError(
            f"cannot read a window from {value!r}; use 'start:stop' fractions or 'a:b steps' (quoted in YAML)"
        )


FULL = Window()
Weight = float | Callable[[int, int], float]
NULL_LABEL = "null"


@dataclass(frozen=True)
class Negative:
    """A negative conditioning with its label (what the record shows), weight λ(t) and window.

    `weight` is a number or `λ(index, num_steps) -> float`; it only matters for extra terms.
    """

    cond: Cond
    label: str
    weight: Weight = 1.0
    window: Window = FULL

    @classmethod
    def null(cls, cond: Cond) -> Negative:
        """The null (empty prompt) conditioning as a negative."""
        return cls(cond, NULL_LABEL)

    @property
    def is_null(self) -> bool:
        return self.label == NULL_LABEL

    def weight_at(self, index: int, num_steps: int) -> float:
        return float(self.weight(index, num_steps)) if callable(self.weight) else float(self.weight)

    def with_window(self, window: Window) -> Negative:
        return Negative(self.cond, self.label, self.weight, window)

    def concat(self, other: Negative, window: Window | None = None) -> Negative:
        """`[self; other]` as one negative (primitive C), labelled `self + other`, in `window` (default: this
        negative's own, so that a base that acts late keeps doing so)."""
        label = f"{self.label} + {other.label}"
        return Negative(self.cond.concat(other.cond), label, window=self.window if window is None else window)


@dataclass
class GuidancePlan:
    """Which negatives guide each step: `base`, windowed `overrides` of the base, windowed extra terms.

    `null_guides` false: a step whose base is the null and that has no extra term runs the prompt alone.
    """

    base: Negative
    overrides: list[Negative] = field(default_factory=list)
    extras: list[Negative] = field(default_factory=list)
    null_guides: bool = True

    def at(self, index: int, num_steps: int) -> tuple[Negative, list[tuple[Negative, float]]]:
        """The base in effect at step `index` and the extra terms `(negative, λ)` with λ ≠ 0 there."""
        base = next((o for o in self.overrides if o.window.contains(index, num_steps)), self.base)
        extras = []
        for extra in self.extras:
            if extra.window.contains(index, num_steps):
                weight = extra.weight_at(index, num_steps)
                if weight != 0:
                    extras.append((extra, weight))
        return base, extras


def compose(
    positive: torch.Tensor,
    base: torch.Tensor,
    guidance_scale: float,
    extras: Sequence[tuple[float, torch.Tensor]] = (),
) -> torch.Tensor:
    """`base + w (positive − base) − Σ_j λ_j (out_j − base)` over model outputs of one shape.

    With no extras this is diffusers' CFG expression exactly (`uncond + w (text − uncond)`).
    """
    guided = guided_output(base, positive, guidance_scale)
    for weight, output in extras:
        guided = guided - weight * (output - base)
    return guided


def dns(positive: torch.Tensor, anchor: torch.Tensor, scale: float) -> torch.Tensor:
    """Diffusion-negative guidance `anchor + s (anchor − positive)`: CFG with the sign flipped.

    Equals diffusers' CFG with prompt and negative swapped at scale `s + 1`:
    `positive + (s + 1)(anchor − positive)`.
    """
    return anchor + scale * (anchor - positive)


@dataclass
class Guided:
    """One composed step: the guided output, the raw prompt/base outputs, and the negatives used."""

    output: torch.Tensor
    positive_output: torch.Tensor
    base_output: torch.Tensor | None
    used: dict
    extra_outputs: list[tuple[float, torch.Tensor]] = field(default_factory=list)


class Composer:
    """Evaluates a `GuidancePlan` at one step with as few network calls as the negatives allow.

    The base, the prompt and every extra in effect go to `model.denoise` together (one batched forward when
    their sequence lengths match, split forwards otherwise). With `guidance_scale == 1` and no extra term the
    base is not evaluated at all: the prompt's output is the result (no CFG, one call per step); likewise at a
    step whose base is the null when the plan's null does not guide.
    """

    def __init__(self, model, schedule, guidance_scale: float):
        self.model = model
        self.schedule = schedule
        self.guidance_scale = guidance_scale

    def guide(
        self, latents: torch.Tensor, index: int, positive: Cond, plan: GuidancePlan, need_base: bool = False
    ) -> Guided:
        """The composed output at step `index`; `need_base` evaluates the base even without CFG (w = 1)."""
        base, extras = plan.at(index, len(self.schedule))
        unguided = self.guidance_scale == 1 or (base.is_null and not plan.null_guides)
        if unguided and not extras and not need_base:
            (out_c,) = self.model.denoise(latents, self.schedule, index, [positive])
            return Guided(out_c, out_c, None, {"step": index, "base": None, "extras": []})
        outputs = self.model.denoise(
            latents, self.schedule, index, [base.cond, positive, *(e.cond for e, _ in extras)]
        )
        out_base, out_c, extra_outputs = outputs[0], outputs[1], outputs[2:]
        terms = [(weight, output) for (_, weight), output in zip(extras, extra_outputs, strict=True)]
        guided = compose(out_c, out_base, self.guidance_scale, terms)
        used = {
            "step": index,
            "base": base.label,
            "extras": [{"negative": e.label, "weight": round(w, 6)} for e, w in extras],
        }
        return Guided(guided, out_c, out_base, used, terms)
