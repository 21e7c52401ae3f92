"""NPC: automated negative prompting for text-image alignment (Park et al., WACV 2026), SD port.

An outer loop around generation, not a per-step rule:
1. generate with the base negative; a verifier judges the image; stop if it is correct;
2. a captioner describes the image, a proposer turns prompt + caption into K short negative candidates
   (cleaned: lowercase, 1–6 words, no negation words, deduplicated);
3. the candidates are ranked by a text-space score without synthesising anything (no network call):
   with ē the pooled text features and Δ = ē(p) − ē(n),
   `S(n) = mean_q cos(Δ, ē(q)) + mean_o cos(Δ, ē(o)) − cos(Δ, ē(n))` over the prompt's quantity tokens q and
   the objects o they count (`proposers.quantity_terms`);
4. the image is regenerated from the same seed with each candidate in rank order until the verifier passes;
   otherwise the best-scoring attempt (the first image included) is kept.

A candidate joins the base inside `window` (NPC's FLUX setting: the first 3 of 50 steps, `"0:3 steps"`;
default: every step) as `candidate_as`: "concat" `[base; E(n)]`, "replace" `E(n)`, "extra"
`−λ(ε(E(n)) − ε_base)`, "auto" (default): replace for a null base, concat otherwise. With a learned base
the generic defect fallbacks (cgi, blurry, ...) are off by default: the learned embedding covers them.

Cost: `2T (1 + a)` NFE for a ≤ K regenerations; ≤ K + 1 verifier calls, 1 caption, 1 proposal, 1 text-feature
batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from renegx.samplers.base import Sampler, SampleRecord, SamplerOptions
from renegx.samplers.composer import Negative, SamplerError, Window, check_choice
from renegx.samplers.external import build_captioner, build_proposer, build_text_embedder, build_verifier
from renegx.samplers.proposers import GENERIC_FALLBACKS, RuleProposer, clean_candidates, quantity_terms

CANDIDATE_FORMS = ("auto", "replace", "concat", "extra")


@dataclass
class NPCOptions(SamplerOptions):
    """candidates: K; window: where a candidate applies; candidate_as: auto | replace | concat | extra;
    candidate_weight: λ of "extra" (default w − 1); checklist: extra text for the verifier;
    generic_fallbacks: top up with generic defects (default: only with a null base);
    verifier: "auto" | "vqa:vilt:<id>" | "vqa:qwen:<id>" | "scripted:0,0,1"; captioner: as dnp's;
    proposer: "rules" | "lm:<folder or hub id>"; text_embedder: "model" (the diffusion model's own text
    encoder) | "hash"."""

    candidates: int = 5
    window: Any = None
    candidate_as: str = "auto"
    candidate_weight: float | None = None
    checklist: str = ""
    generic_fallbacks: bool | None = None
    verifier: str = "auto"
    captioner: str = "auto"
    proposer: str = "rules"
    text_embedder: str = "model"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.window = Window.parse(self.window)
        if self.candidates < 1:
            raise SamplerError(f"candidates must be >= 1, got {self.candidates}")
        check_choice("candidate_as", self.candidate_as, CANDIDATE_FORMS)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def salient_scores(embedder, prompt: str, candidates: list[str]) -> list[float]:
    """The text-space score S(n) of each candidate (higher first); one `embed` call, no image model."""
    if not candidates:
        return []
    quantities, objects = quantity_terms(prompt)
    features = embedder.embed([prompt, *candidates, *quantities, *objects]).float()
    prompt_feature = features[0]
    candidate_features = features[1 : 1 + len(candidates)]
    quantity_features = features[1 + len(candidates) : 1 + len(candidates) + len(quantities)]
    object_features = features[1 + len(candidates) + len(quantities) :]
    scores = []
    for feature in candidate_features:
        delta = prompt_feature - feature
        score = (
            _cosine(delta[None], quantity_features).mean()
            + _cosine(delta[None], object_features).mean()
            - _cosine(delta, feature)
        )
        scores.append(float(score))
    return scores


class NPCSampler(Sampler):
    name = "npc"
    Options = NPCOptions

    def __init__(
        self,
        model,
        options=None,
        *,
        verifier=None,
        captioner=None,
        proposer=None,
        text_embedder=None,
        **overrides,
    ):
        super().__init__(model, options, **overrides)
        # Built by `prepare` when not given.
        self.verifier, self.captioner, self.text_embedder = verifier, captioner, text_embedder
        self._proposer = proposer

    def proposer(self, base: Negative):
        if self._proposer is not None:
            return self._proposer
        fallbacks = self.options.generic_fallbacks
        fallbacks = base.is_null if fallbacks is None else fallbacks
        if self.options.proposer == "rules":
            return RuleProposer(GENERIC_FALLBACKS if fallbacks else ())
        self._proposer = build_proposer(
            self.options.proposer, fallbacks=GENERIC_FALLBACKS if fallbacks else (), device=self.model.device
        )
        return self._proposer

    def prepare(self) -> None:
        if self.verifier is None:
            self.verifier = build_verifier(self.options.verifier, self.model)
        if self.captioner is None:
            self.captioner = build_captioner(self.options.captioner, self.model)
        if self.text_embedder is None:
            self.text_embedder = build_text_embedder(self.options.text_embedder, self.model)

    def _attempt(self, prompt: str, positive, seed: int, plan, record: SampleRecord, label):
        """Generate once from `seed` under `plan` and verify; returns the attempt's summary and latents."""
        steps: list[dict] = []
        nfe_before = self.model.nfe
        latents = self.denoise_loop(positive, self.start(seed), plan, _Steps(steps))
        image = self.model.decode(latents)
        record.calls["vae_decode"] += 1
        verdict = self.verifier.verify(image, prompt, self.options.checklist)
        record.calls["verifier"] += 1
        summary = {
            "negative": label,
            "correct": bool(verdict.correct),
            "score": float(verdict.score),
            "reason": verdict.reason,
            "nfe": self.model.nfe - nfe_before,
        }
        return summary, latents, steps, image

    def _run(self, prompt: str, seed: int, base: Negative, record: SampleRecord) -> tuple[torch.Tensor, dict]:
        options = self.options
        positive = self.model.encode([prompt])
        first, latents, steps, image = self._attempt(prompt, positive, seed, self.plan(base), record, None)
        attempts, best = [first], (first, latents, steps)
        stopped = "verified" if first["correct"] else "best_score_fallback"
        details: dict = {"attempts": attempts, "stopped": stopped}
        if first["correct"]:
            record.steps.extend(steps)
            return latents, {"npc": details}

        caption = self.captioner.caption(image)[0]
        record.calls["captioner"] += 1
        proposed = self.proposer(base).propose(prompt, caption, first["reason"], options.candidates)
        record.calls["proposer"] += 1
        candidates = clean_candidates(proposed, prompt, options.candidates)
        nfe_before = self.model.nfe
        scores = salient_scores(self.text_embedder, prompt, candidates)
        record.calls["text_embedder"] += 1 if candidates else 0
        ranked = sorted(zip(candidates, scores, strict=True), key=lambda pair: -pair[1])
        details.update(
            caption=caption,
            candidates=[{"negative": c, "score": round(s, 6)} for c, s in ranked],
            ranking_nfe=self.model.nfe - nfe_before,
        )
        for candidate, _ in ranked:
            record.calls["text_encoder"] += 1
            plan = self._candidate_plan(base, candidate)
            attempt, latents, steps, _ = self._attempt(prompt, positive, seed, plan, record, candidate)
            attempts.append(attempt)
            if attempt["correct"] or attempt["score"] > best[0]["score"]:
                best = (attempt, latents, steps)
            if attempt["correct"]:
                details["stopped"] = "verified"
                break
        record.steps.extend(best[2])
        details["chosen"] = best[0]["negative"]
        return best[1], {"npc": details}

    def _candidate_plan(self, base: Negative, candidate: str):
        options = self.options
        negative = Negative(self.model.encode([candidate]), f"candidate:{candidate}", window=options.window)
        form = options.candidate_as
        if form == "auto":
            form = "replace" if base.is_null else "concat"
        if form == "replace":
            return self.plan(base, extra_overrides=[negative])
        if form == "concat":
            return self.plan(base, extra_overrides=[base.concat(negative, window=options.window)])
        weight = options.guidance_scale - 1 if options.candidate_weight is None else options.candidate_weight
        return self.plan(base, extra_terms=[Negative(negative.cond, negative.label, weight, options.window)])


class _Steps:
    """A stand-in record that only collects per-step negatives (attempts keep their own)."""

    def __init__(self, steps: list[dict]):
        self.steps = steps
