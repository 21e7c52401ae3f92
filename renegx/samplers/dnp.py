"""DNP: diffusion-negative prompting (Desai & Vasconcelos, ECCV 2024).

Stage A draws a diffusion-negative (DNS) sample, the image *least* compliant with the prompt, by CFG with the
sign flipped: `ε_dns = ε_anchor + s (ε_anchor − ε_p)` (the anchor is the null by definition; the base as an
ablation). Stage B captions that image and runs plain CFG with the caption as (part of) the negative:
- `caption_as="replace"`: `E(caption)` replaces the base (the original method, base = null);
- `caption_as="concat"`: `[base; E(caption)]` (primitive C, 0 extra NFE: a learned embedding stays in place);
- `caption_as="extra"`: an extra term `−λ (ε(E(caption)) − ε_base)` (primitive X, +1 NFE per step);
- `caption_as="auto"` (default): "replace" when the base is the null, "concat" otherwise.
The prompt's own words are filtered out of the caption by default (`keep_prompt_words`, see
`renegx.samplers.prompt_words`): a caption that names the prompt's subject would negate the prompt itself.

Cost: `2·dns_steps + 2·steps` NFE (+`steps` for "extra"), one VAE decode and one caption.
Unverified in the paper and therefore options: the DNS scale (default: the guidance scale), its step count,
and whether stage A shares the seed (default: yes, `dns_seed_offset=0`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from renegx.samplers.base import Sampler, SampleRecord, SamplerOptions
from renegx.samplers.composer import Negative, SamplerError, check_choice, dns
from renegx.samplers.prompt_words import without_prompt_words

CAPTION_FORMS = ("auto", "replace", "concat", "extra")


@dataclass
class DNPOptions(SamplerOptions):
    """dns_scale: s of the DNS chain (default: guidance_scale); dns_steps: its steps (default: steps);
    dns_seed_offset: the DNS chain draws from seed + offset; dns_anchor: "null" | "base";
    caption_as: auto | replace | concat | extra; caption_weight: λ of the "extra" form (default w − 1);
    captioner: "auto" | "blip2:<folder or hub id>" | "fixed:<caption>"; keep_prompt_words: keep the prompt's
    own words in the caption (default false: `renegx.samplers.prompt_words`)."""

    dns_scale: float | None = None
    dns_steps: int | None = None
    dns_seed_offset: int = 0
    dns_anchor: str = "null"
    caption_as: str = "auto"
    caption_weight: float | None = None
    captioner: str = "auto"
    keep_prompt_words: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("dns_anchor", self.dns_anchor, ("null", "base"))
        check_choice("caption_as", self.caption_as, CAPTION_FORMS)
        if self.dns_steps is not None and self.dns_steps < 1:
            raise SamplerError(f"dns_steps must be >= 1, got {self.dns_steps}")


def dns_chain(model, prompt_cond, anchor_cond, latents, schedule, scale: float) -> torch.Tensor:
    """A whole diffusion-negative chain from `latents` under `ε_a + s (ε_a − ε_p)`; its final latents."""
    for index in range(len(schedule)):
        out_p, out_anchor = model.denoise(latents, schedule, index, [prompt_cond, anchor_cond])
        latents, _ = schedule.step(dns(out_p, out_anchor, scale), index, latents)
    return latents


class DNPSampler(Sampler):
    name = "dnp"
    Options = DNPOptions

    def __init__(self, model, options=None, *, captioner=None, **overrides):
        super().__init__(model, options, **overrides)
        self.captioner = captioner  # built by `prepare` when not given

    def prepare(self) -> None:
        if self.captioner is None:
            from renegx.samplers.external import build_captioner

            self.captioner = build_captioner(self.options.captioner, self.model)

    def _run(self, prompt: str, seed: int, base: Negative, record: SampleRecord) -> tuple[torch.Tensor, dict]:
        options = self.options
        scale = options.guidance_scale if options.dns_scale is None else options.dns_scale
        anchor = base if options.dns_anchor == "base" else Negative.null(self.model.null())
        positive = self.model.encode([prompt])

        negative_latents = self.start(seed + options.dns_seed_offset)
        latent_size = tuple(negative_latents.shape[-2:])
        dns_schedule = self.model.schedule(options.dns_steps or options.steps, latent_size)
        negative_latents = dns_chain(self.model, positive, anchor.cond, negative_latents, dns_schedule, scale)
        negative_image = self.model.decode(negative_latents)
        record.calls["vae_decode"] += 1
        caption = self.captioner.caption(negative_image)[0].strip()
        record.calls["captioner"] += 1
        if not options.keep_prompt_words:
            caption = without_prompt_words(caption, prompt)

        form = options.caption_as
        if form == "auto":
            form = "replace" if base.is_null else "concat"
        plan = self.plan(base)
        if caption:
            record.calls["text_encoder"] += 1
            caption_negative = Negative(self.model.encode([caption]), f"caption:{caption}")
            if form == "replace":
                plan = self.plan(caption_negative)
            elif form == "concat":
                plan = self.plan(base.concat(caption_negative))
            else:
                weight = options.caption_weight
                weight = options.guidance_scale - 1 if weight is None else weight
                term = Negative(caption_negative.cond, caption_negative.label, weight)
                plan = self.plan(base, extra_terms=[term])
        latents = self.denoise_loop(positive, self.start(seed), plan, record)
        details = {
            "dns": {
                "steps": len(dns_schedule),
                "scale": scale,
                "anchor": anchor.label,
                "seed": seed + options.dns_seed_offset,
                "caption": caption,
                "caption_as": form,
            }
        }
        return latents, details
