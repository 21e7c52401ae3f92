"""Inference samplers over one guidance composer, each taking a learned embedding as its base negative.

    model = load_sampling_model("tiny")      # any family: a name, an SD/SDXL/SD3 folder, a hub id
    sampler = build_sampler("vlm", model, {"steps": 30, "oracle": "scripted:cat,dog"})
    result = sampler.sample("a new kind of pet", seed=0, base=NegativeEmbedding.load("negative.safetensors"))
    result.image                  # (1, 3, H, W) in [0, 1]
    result.record.to_json()       # nfe, negatives per step, external calls, seconds

| sampler | what chooses the negative | NFE per image |
|---|---|---|
| cfg | the base (null, text, learned embedding, bank row), plus windowed extras | 2T |
| dnp | the caption of a diffusion-negative sample joins the base | 2T_dns + 2T, 1 caption |
| answer | a K-step DNS look-ahead in latent space (RECONSTRUCTION, see answer.py) | ≈ 2T + 2(K−1)T |
| vlm | VQA answers about x̂0, accumulated along the trajectory | 2T, VQA calls per queried step |
| npc | verifier → captioner → proposer, text-space ranking, regenerate | 2T (1 + attempts) |
"""

from __future__ import annotations

import dataclasses
import textwrap

from renegx.samplers.adapters import SamplingModel, load_sampling_model, sampling_model
from renegx.samplers.answer import AnswerSampler
from renegx.samplers.base import Sampler, SampleRecord, SampleResult, SamplerOptions, options_from
from renegx.samplers.cfg import CFGSampler
from renegx.samplers.composer import Cond, GuidancePlan, Negative, SamplerError, Window, compose, dns
from renegx.samplers.dnp import DNPSampler
from renegx.samplers.npc import NPCSampler
from renegx.samplers.vlm import VLMSampler

SAMPLERS: dict[str, type[Sampler]] = {
    "cfg": CFGSampler,
    "dnp": DNPSampler,
    "answer": AnswerSampler,
    "vlm": VLMSampler,
    "npc": NPCSampler,
}


def build_sampler(name: str, model: SamplingModel, options: dict | None = None, **external) -> Sampler:
    """The sampler `name` over `model` with options from a mapping (YAML, `--sampler-opt`) and optional
    external-model objects (`captioner=`, `oracle=`, `verifier=`, `proposer=`, `text_embedder=`)."""
    if name not in SAMPLERS:
        raise SamplerError(f"unknown sampler '{name}'; known: {', '.join(SAMPLERS)}")
    sampler_class = SAMPLERS[name]
    return sampler_class(model, options_from(sampler_class.Options, options), **external)


def describe_options() -> str:
    """Every sampler's own options with their defaults (for `infer.py --help`)."""
    common = {f.name for f in dataclasses.fields(SamplerOptions)}
    lines = [f"  all: {', '.join(sorted(common))}"]
    for name, sampler_class in SAMPLERS.items():
        own = [f for f in dataclasses.fields(sampler_class.Options) if f.name not in common]
        shown = []
        for field in own:
            factory = field.default_factory
            default = factory() if factory is not dataclasses.MISSING else field.default
            shown.append(f"{field.name}={default!r}")
        label = " (RECONSTRUCTION of unpublished equations)" if name == "answer" else ""
        text = f"  {name}{label}: {', '.join(shown) or '-'}"
        lines.append(textwrap.fill(text, width=110, subsequent_indent="      "))
    return "\n".join(lines)


__all__ = [
    "SAMPLERS",
    "AnswerSampler",
    "CFGSampler",
    "Cond",
    "DNPSampler",
    "GuidancePlan",
    "NPCSampler",
    "Negative",
    "SampleRecord",
    "SampleResult",
    "Sampler",
    "SamplerError",
    "SamplerOptions",
    "SamplingModel",
    "VLMSampler",
    "Window",
    "build_sampler",
    "compose",
    "describe_options",
    "dns",
    "load_sampling_model",
    "sampling_model",
]
