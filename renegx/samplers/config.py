"""Sampler choice and options from a YAML file and `KEY=VALUE` overrides (what `infer.py` reads).

A sampler config is a flat mapping; `sampler` names the sampler, every other key is one of its options:

    # renegx infer --sampler-config samplers/vlm --prompt "a new pet" --out out/
    sampler: vlm
    questions: ["What pet do you recognize in the image?"]
    query_window: "0:0.5"          # quote windows: YAML reads an unquoted 0:30 as a number
    negatives_as: concat

Values of `--sampler-opt KEY=VALUE` are read as YAML too (`top_k=2`, `'questions=["What pet?"]'`,
`window=0:3 steps`).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

from renegx.samplers.composer import SamplerError, Window


def load_sampler_config(path: str | Path) -> tuple[str | None, dict]:
    """`(sampler name or None, options)` from a YAML file."""
    path = Path(path)
    if not path.is_file():
        raise SamplerError(f"sampler config not found: {path}")
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SamplerError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(content, dict):
        raise SamplerError(f"{path} must hold a mapping of sampler options, got {type(content).__name__}")
    options = dict(content)
    return options.pop("sampler", None), options


WINDOW_TEXT = re.compile(r"^\s*[\d.]+\s*:\s*[\d.]+\s*(steps)?\s*$")  # YAML 1.1 would read 0:30 as a number


def parse_overrides(items: list[str]) -> dict:
    """`["k=v", ...]` → `{k: yaml(v)}`; windows ("0:0.5") and what YAML cannot read stay strings."""
    options = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise SamplerError(f"--sampler-opt expects KEY=VALUE, got '{item}'")
        try:
            value = text if not text.strip() or WINDOW_TEXT.match(text) else yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        options[key.strip()] = value
    return options


def jsonable(value: Any) -> Any:
    """Options as JSON values (windows as text, dataclasses as mappings) for the sidecar."""
    if isinstance(value, Window):
        return value.describe()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


def sampled_image_record(name: str, sampler, model, result, clip_skip, dtype: str) -> dict:
    """What an image's sidecar says about how it was sampled: the sampler and its options, the scheduler,
    steps, scale, size, dtype and the sampler's own record (NFE, time, its adaptive choices)."""
    record = result.record.to_json()
    return {
        "sampler": name,
        "sampler_options": jsonable(sampler.options),
        "scheduler": model.spec.scheduler_label,
        "num_inference_steps": sampler.options.steps,
        "guidance_scale": sampler.options.guidance_scale,
        "clip_skip": clip_skip,
        "height": result.image.shape[-2],
        "width": result.image.shape[-1],
        "dtype": dtype,
        **{key: value for key, value in record.items() if key != "sampler"},
    }
