"""VLM-guided adaptive negatives for creative generation (Golan et al., ICLR 2026).

At each queried step the guided x̂0 is decoded and shown to a VQA model with category questions ("What pet
do you recognize in the image?"); the cleaned answers accumulate into a growing negative set, re-encoded as
`", ".join(set)` and applied **from the next step** (a one-step lag). The set steers the sample away from
every typical answer seen along its own trajectory. The prompt's own words are filtered out of the answers
(`keep_prompt_words=false`, the default): the VQA model sees the prompt's subject in every image, and "circle"
as a negative for "a red circle" steers away from the prompt itself.

How the set enters the guidance (`negatives_as`): "replace" (the set replaces the base: the original
method), "concat" (`[base; E(set)]`: a learned embedding stays as base, 0 extra NFE), "extra"
(`−λ (ε(E(set)) − ε_base)`, +1 NFE per step), "auto" (default): "replace" for a null base, "concat" otherwise.
A base that acts late (a file's `negative_from`, `base_window`) keeps its window, and the set is concatenated
to the null before it and to the base after: the answers act from the next step either way.

Token budget (`token_budget`) for 77-token CLIP encoders, where a long set would be silently truncated:
"newest" keeps the newest entries that fit, "chunks" encodes 77-token chunks and concatenates them, "none"
lets the tokenizer truncate. x̂0 of flow models (`x0_mode`): "paper" `x_t − σ v`, "repo" `x_t − v`.

The paper's setting (SD3.5-Large, 28 steps, w = 4.5, ViLT, every step queried) is `steps=28,
guidance_scale=4.5, oracle="vilt:dandelin/vilt-b32-finetuned-vqa"`.

Cost: the UNet cost of CFG (2T); per queried step one VAE decode and one VQA call per question; at most one
text re-encode per step whose set changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from renegx.samplers.base import Sampler, SampleRecord, SamplerOptions
from renegx.samplers.composer import FULL, Composer, Cond, Negative, SamplerError, Window, check_choice
from renegx.samplers.prompt_words import without_prompt_words

NEGATIVE_FORMS = ("auto", "replace", "concat", "extra")
TOKEN_BUDGETS = ("newest", "chunks", "none")
DROPPED_ANSWERS = {"", "yes", "no", "none", "nothing", "unknown", "n/a", "nan", "not sure", "i don't know"}
_LEADING = re.compile(r"^(?:(?:it is|it's|this is|that is|there is|looks like|it looks like|a|an|the)\s+)+")


def clean_answer(answer: str) -> str:
    """A VQA answer as a negative: lowercase, no punctuation, no leading "it is"/"looks like"/articles;
    "" for non-answers (yes, no, none, unknown...)."""
    text = re.sub(r"[^\w\s'-]", " ", answer.lower())
    text = " ".join(text.split())
    text = _LEADING.sub("", text).strip()
    return "" if text in DROPPED_ANSWERS else text


@dataclass
class VLMOptions(SamplerOptions):
    """oracle: "auto" | "vilt:<id>" | "qwen:<id>" | "scripted:a,b,..."; questions: asked at each queried
    step; query_window: steps queried (default all); query_every: query every n-th step; top_k: answers kept
    per question; main_object: appended to each answer ("wood" → "wood building"); initial_negative: the set's
    first entry; clear_at_stop: drop the set after the query window; negatives_as: auto | replace | concat |
    extra; negative_weight: λ of "extra" (default w − 1); token_budget: newest | chunks | none;
    x0_mode: paper | repo (flow models only); keep_prompt_words: keep the prompt's own words in answers
    (default false: "a red circle" never gets "circle" as a negative; the paper keeps them)."""

    oracle: str = "auto"
    questions: list = field(default_factory=lambda: ["What kind of object is in the image?"])
    query_window: Any = None
    query_every: int = 1
    top_k: int = 1
    main_object: str | None = None
    initial_negative: str | None = None
    clear_at_stop: bool = False
    negatives_as: str = "auto"
    negative_weight: float | None = None
    token_budget: str = "newest"
    x0_mode: str = "paper"
    keep_prompt_words: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.query_window = Window.parse(self.query_window)
        if isinstance(self.questions, str):
            self.questions = [self.questions]
        if not self.questions:
            raise SamplerError("the vlm sampler needs at least one question")
        if self.query_every < 1 or self.top_k < 1:
            raise SamplerError(f"query_every and top_k must be >= 1, got {self.query_every} and {self.top_k}")
        check_choice("negatives_as", self.negatives_as, NEGATIVE_FORMS)
        check_choice("token_budget", self.token_budget, TOKEN_BUDGETS)
        check_choice("x0_mode", self.x0_mode, ("paper", "repo"))


class VLMSampler(Sampler):
    name = "vlm"
    Options = VLMOptions

    def __init__(self, model, options=None, *, oracle=None, **overrides):
        super().__init__(model, options, **overrides)
        self.oracle = oracle  # built by `prepare` when not given
        if self.options.x0_mode == "repo" and model.spec.scheduler != "flow":
            raise SamplerError("x0_mode 'repo' only exists for flow models; DDIM models have one x̂0")

    def prepare(self) -> None:
        if self.oracle is None:
            from renegx.samplers.external import build_oracle

            self.oracle = build_oracle(self.options.oracle, self.model)

    def _run(self, prompt: str, seed: int, base: Negative, record: SampleRecord) -> tuple[torch.Tensor, dict]:
        options = self.options
        latents = self.start(seed)
        schedule = self.schedule_for(latents)
        steps = len(schedule)
        positive = self.model.encode([prompt])
        initial = [options.initial_negative] if options.initial_negative else []
        negatives = list(initial)
        plan, kept = self._plan(base, negatives, record)
        composer = Composer(self.model, schedule, options.guidance_scale)
        queries, was_inside = [], False
        for index in range(steps):
            guided = composer.guide(latents, index, positive, plan)
            record.steps.append(guided.used)
            if options.x0_mode == "repo":  # the VLM-guided creative code's x̂0 of a velocity, ignoring σ
                x0 = latents - guided.output
            else:
                x0 = schedule.x0(guided.output, index, latents)
            latents, _ = schedule.step(guided.output, index, latents)
            inside = options.query_window.contains(index, steps)
            changed = False
            if inside and index % options.query_every == 0:
                image = self.model.decode(x0)
                record.calls["vae_decode"] += 1
                answers = []
                for question in options.questions:
                    record.calls["vqa"] += 1
                    for answer in self.oracle.ask(image, question, options.top_k)[: options.top_k]:
                        answer = clean_answer(answer)
                        if not options.keep_prompt_words:
                            answer = without_prompt_words(answer, prompt)
                        if answer and options.main_object:
                            answer = f"{answer} {options.main_object}"
                        answers.append(answer)
                        if answer and answer not in negatives:
                            negatives.append(answer)
                            changed = True
                queries.append({"step": index, "answers": answers})
            elif was_inside and not inside and options.clear_at_stop and negatives != initial:
                negatives, changed = list(initial), True
            was_inside = inside
            if changed and index < steps - 1:
                plan, kept = self._plan(base, negatives, record)
        details = {"negative_set": negatives, "negative_set_applied": kept, "queries": queries}
        return latents, {"vlm": details}

    # --- the set as a negative ----------------------------------------------------------------------------
    def _plan(self, base: Negative, negatives: list[str], record: SampleRecord):
        """The guidance plan for the current set (re-encoded), and the entries that fit the token budget."""
        if not negatives:
            return self.plan(base), []
        record.calls["text_encoder"] += 1
        cond, kept = self._encode_set(negatives)
        label = "set:" + ", ".join(kept)
        form = self.options.negatives_as
        if form == "auto":
            form = "replace" if base.is_null else "concat"
        if form == "replace":
            return self.plan(Negative(cond, label)), kept
        if form == "concat":
            answers = Negative(cond, label)
            plan = self.plan(base.concat(answers))
            if plan.base.is_null and not base.is_null:
                # A base that acts late: the answers guide its null steps too, from the step after they came.
                plan.base = plan.base.concat(answers, window=FULL)
            return plan, kept
        weight = self.options.negative_weight
        weight = self.options.guidance_scale - 1 if weight is None else weight
        return self.plan(base, extra_terms=[Negative(cond, label, weight)]), kept

    def _encode_set(self, negatives: list[str]) -> tuple[Cond, list[str]]:
        budget, model = self.options.token_budget, self.model
        if budget == "none":
            return model.encode([", ".join(negatives)]), list(negatives)
        if budget == "newest":
            kept = fit_newest(negatives, model.count_tokens, model.max_length)
            return model.encode([", ".join(kept)]), kept
        chunks = chunk_entries(negatives, model.count_tokens, model.max_length)
        conds = [model.encode([", ".join(chunk)]) for chunk in chunks]
        return conds[0].concat(*conds[1:]), list(negatives)


def fit_newest(entries: list[str], count_tokens, max_tokens: int) -> list[str]:
    """The newest entries whose `", "`-joined text fits in `max_tokens` (always at least the newest one)."""
    kept: list[str] = []
    for entry in reversed(entries):
        if kept and count_tokens(", ".join([entry, *kept])) > max_tokens:
            break
        kept.insert(0, entry)
    return kept


def chunk_entries(entries: list[str], count_tokens, max_tokens: int) -> list[list[str]]:
    """Entries grouped in order so each group's joined text fits in `max_tokens` (one encoder pass each)."""
    chunks: list[list[str]] = [[]]
    for entry in entries:
        if chunks[-1] and count_tokens(", ".join([*chunks[-1], entry])) > max_tokens:
            chunks.append([])
        chunks[-1].append(entry)
    return chunks
