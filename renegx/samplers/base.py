"""What every sampler shares: its options, the base negative, the record of a run, and the main loop.

A sampler draws one image per call, `sampler.sample(prompt, seed, base=...)`, from a `torch.Generator`
seeded with `seed` (so an image depends on its seed only, never on what was drawn before it). The base
negative is the null (`None`), a handcrafted text (`"text:blurry, ugly"` or a plain string), a learned
embedding (`NegativeEmbedding`), a bank row or any `(1, L, D)` tensor, or a ready `Negative`.

The returned `SampleRecord` holds what the JSON sidecar shows: `nfe` (an integer), the negatives used at each
main-chain step, external-model calls by kind, wall time, and per-sampler details.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from renegx.errors import RenegxWarning
from renegx.samplers.adapters import SamplingModel
from renegx.samplers.composer import Composer, GuidancePlan, Negative, SamplerError, Window

EXTRA_FORMS = ("extra", "concat", "replace")


class SamplerCaution(RenegxWarning):
    """What a sampler is known to do at its defaults, said once when it is built."""


@dataclass
class ExtraNegative:
    """A text negative added to any sampler for part of the schedule (windowed or delayed negatives).

    form "extra": an extra composer term `−λ (ε(text) − ε_base)` (+1 NFE per step in the window);
    form "concat": `[base; E(text)]` replaces the base in the window (0 extra NFE);
    form "replace": `E(text)` replaces the base in the window.
    """

    text: str
    window: Any = None
    form: str = "extra"
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.form not in EXTRA_FORMS:
            raise SamplerError(f"negative form must be one of {', '.join(EXTRA_FORMS)}, got '{self.form}'")
        if not self.text.strip():
            raise SamplerError("an extra negative needs a non-empty text")
        self.window = Window.parse(self.window)


@dataclass
class SamplerOptions:
    """Options every sampler takes.

    steps: main-chain steps T; guidance_scale: w (1 = no CFG, prompt only);
    height/width: image size (default: the model's native size);
    base_window: where the base negative is in effect (outside it the null takes its place), e.g. "0.3:1"
    to delay a learned embedding (a file trained with `negative_from` brings its own window);
    negatives: extra windowed text negatives (`ExtraNegative` mappings);
    guide_with_null: false: a step whose only negative is the null runs the prompt alone (one network call,
    no CFG), as a guidance-distilled model (FLUX.1-dev) draws without a negative; NPC's FLUX setting.
    """

    steps: int = 30
    guidance_scale: float = 7.5
    height: int | None = None
    width: int | None = None
    base_window: Any = None
    negatives: list = field(default_factory=list)
    guide_with_null: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise SamplerError(f"steps must be >= 1, got {self.steps}")
        if self.base_window is not None:  # None: the base's own window (a file's `negative_from`), else all
            self.base_window = Window.parse(self.base_window)
        self.negatives = [n if isinstance(n, ExtraNegative) else _extra(n) for n in self.negatives]


def _extra(value) -> ExtraNegative:
    if isinstance(value, str):
        return ExtraNegative(value)
    if not isinstance(value, dict):
        raise SamplerError(f"an extra negative is a text or a mapping, got {value!r}")
    known = {f.name for f in dataclasses.fields(ExtraNegative)}
    unknown = set(value) - known
    if unknown:
        names = ", ".join(sorted(unknown))
        raise SamplerError(f"unknown extra-negative keys: {names} (known: {', '.join(sorted(known))})")
    return ExtraNegative(**value)


def options_from(cls: type, values: dict | None) -> Any:
    """`cls(**values)` with a one-line error naming unknown keys (for YAML and `--sampler-opt`)."""
    values = dict(values or {})
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in values if key not in known]
    if unknown:
        names = ", ".join(unknown)
        raise SamplerError(f"unknown option(s) {names} for {cls.__name__}; known: {', '.join(known)}")
    try:
        return cls(**values)
    except TypeError as err:
        raise SamplerError(f"bad options for {cls.__name__}: {err}") from None


@dataclass
class SampleRecord:
    """What one image cost and which negatives made it.

    nfe: network evaluations (batch items); steps: per main-chain step `{"step", "base", "extras"}`;
    calls: external work by kind: "vae_decode", "captioner", "vqa", "verifier", "proposer", "text_embedder",
    "text_encoder" (dynamic negatives encoded); seconds: wall time (external-model loading excluded).
    """

    sampler: str
    nfe: int = 0
    steps: list[dict] = field(default_factory=list)
    calls: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    details: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "sampler": self.sampler,
            "nfe": int(self.nfe),
            "negatives_per_step": self.steps,
            "external_calls": dict(sorted(self.calls.items())),
            "seconds": round(self.seconds, 4),
            **({"details": self.details} if self.details else {}),
        }


@dataclass
class SampleResult:
    """One image: final latents `(1, C, h, w)`, the image `(1, 3, H, W)` in [0, 1], and its record."""

    latents: torch.Tensor
    image: torch.Tensor
    record: SampleRecord


class Sampler:
    """Base of the samplers: resolves the base negative, times the run, counts NFE and calls."""

    name = "base"
    Options = SamplerOptions
    caution: str | None = (
        None  # one warning line when the sampler is built (what its defaults are known to do)
    )

    def __init__(self, model: SamplingModel, options: SamplerOptions | dict | None = None, **overrides):
        if self.caution is not None:
            warnings.warn(SamplerCaution(self.caution), stacklevel=2)
        self.model = model
        if options is None or isinstance(options, dict):
            options = options_from(self.Options, {**(options or {}), **overrides})
        elif overrides:
            options = dataclasses.replace(options, **overrides)
        self.options = options

    # --- the public call ----------------------------------------------------------------------------------
    def sample(self, prompt: str, seed: int, base: Any = None) -> SampleResult:
        """Draw one image for `prompt` from `seed` with `base` as the base negative (None: the null)."""
        self.prepare()
        record = SampleRecord(self.name)
        began, nfe_before = time.perf_counter(), self.model.nfe
        latents, details = self._run(prompt, seed, self.base_negative(base), record)
        image = self.model.decode(latents)
        record.calls["vae_decode"] += 1
        record.nfe = self.model.nfe - nfe_before
        record.seconds = time.perf_counter() - began
        record.details.update(details)
        return SampleResult(latents, image, record)

    def _run(self, prompt: str, seed: int, base: Negative, record: SampleRecord) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Load the external models now, so that loading is not timed as sampling."""

    # --- helpers for subclasses ---------------------------------------------------------------------------
    def base_negative(self, base: Any) -> Negative:
        """Any accepted base as a `Negative`: None, a text, a `NegativeEmbedding`, a `(1, L, D)` tensor."""
        from renegx.negatives.embedding import NegativeEmbedding

        if base is None or (isinstance(base, str) and base in ("", "null")):
            return Negative.null(self.model.null())
        if isinstance(base, Negative):
            return base
        if isinstance(base, str):
            text = base[len("text:") :] if base.startswith("text:") else base
            return Negative(self.model.encode([text]), f"text:{text}")
        if isinstance(base, NegativeEmbedding):
            if base.kind == "bank" and base.embeds.shape[0] != 1:
                raise SamplerError(
                    f"a bank of {base.embeds.shape[0]} rows is not one base negative; pass the prompt's row"
                )
            negative = self.model.negative(base.embeds, "embedding", base.pooled)
            return negative.with_window(Window(base.negative_from)) if base.negative_from else negative
        if isinstance(base, torch.Tensor):
            return self.model.negative(base, "embedding")
        raise SamplerError(f"cannot use a {type(base).__name__} as a base negative")

    def plan(self, base: Negative, extra_overrides=(), extra_terms=()) -> GuidancePlan:
        """The guidance plan of `base` with the common options applied: its window (`base_window`, else the
        base's own: a file's `negative_from`) and extra negatives.

        `extra_overrides`/`extra_terms` are a sampler's own windowed base replacements and extra terms; they
        come before the user's `negatives` (the first override in effect wins).
        """
        options = self.options
        null = Negative.null(self.model.null())
        window_base = base
        overrides, extras = list(extra_overrides), list(extra_terms)
        window = base.window if options.base_window is None else options.base_window
        if not window.is_full:
            window_base = base.with_window(window)
            base = null
        for extra in options.negatives:
            text = Negative(self.model.encode([extra.text]), f"text:{extra.text}", extra.weight, extra.window)
            if extra.form == "extra":
                extras.append(text)
            elif extra.form == "concat":
                overrides.append(window_base.concat(text, window=extra.window))
            else:
                overrides.append(text)
        if window_base is not base:
            overrides.append(window_base)
        return GuidancePlan(base, overrides, extras, null_guides=options.guide_with_null)

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator("cpu").manual_seed(int(seed))

    def denoise_loop(self, prompt_cond, latents: torch.Tensor, plan: GuidancePlan, record) -> torch.Tensor:
        """Run the whole main chain of `plan` from `latents`; per-step negatives go to `record.steps`."""
        schedule = self.schedule_for(latents)
        composer = Composer(self.model, schedule, self.options.guidance_scale)
        for index in range(len(schedule)):
            guided = composer.guide(latents, index, prompt_cond, plan)
            latents, _ = schedule.step(guided.output, index, latents)
            record.steps.append(guided.used)
        return latents

    def schedule_for(self, latents: torch.Tensor):
        return self.model.schedule(self.options.steps, tuple(latents.shape[-2:]))

    def start(self, seed: int) -> torch.Tensor:
        return self.model.initial_latents(self.generator(seed), self.options.height, self.options.width)
