"""The configs renegx ships, as package data: one folder per job (`train/`, `evaluate/`, `samplers/`).

A config is named by its shipped name (`train/tiny`; `tiny` where the job is known) or by a path to a YAML
file; `resolve` turns either into a file, so an installed renegx runs its own configs from any folder. Every
training config is read over `train/base` (the trainer and callbacks they share).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import yaml

from renegx.errors import RenegxError, did_you_mean

FOLDER = Path(str(files(__name__)))
JOBS = ("train", "evaluate", "samplers")
TRAIN_BASE = FOLDER / "train" / "base.yaml"
DEFAULT_TRAIN = "train/default"  # what `renegx fit` and `python train.py` train with no config given


class ConfigError(RenegxError):
    """A config named neither by an existing file nor by a shipped name."""


def shipped(job: str | None = None) -> list[str]:
    """The shipped config names (`train/tiny`), of one job or of every job, sorted."""
    jobs = JOBS if job is None else (job,)
    return sorted(f"{j}/{path.stem}" for j in jobs for path in (FOLDER / j).glob("*.yaml"))


def path_of(name: str) -> Path:
    """The file of a shipped config name (`train/tiny`)."""
    return FOLDER / f"{name}.yaml"


def resolve(value: str | Path, job: str | None = None, what: str = "config file") -> Path:
    """A config's file: `value` itself when it is a file; else the shipped config it names — `train/tiny`,
    `tiny` for `job` 'train', or a source checkout's `configs/train/tiny.yaml`. A missing file is reported
    as `<what> not found`."""
    path = Path(value)
    if path.is_file():
        return path
    name = str(value).removeprefix("configs/").removesuffix(".yaml")
    candidates = [name] if "/" in name or job is None else [f"{job}/{name}", name]
    for candidate in candidates:
        if candidate in shipped():
            return path_of(candidate)
    if path.suffix in (".yaml", ".yml") or path.is_absolute():
        raise ConfigError(f"{what} not found: {value}")
    names = shipped(job)
    nearest = did_you_mean(candidates[0], names)
    raise ConfigError(f"no shipped config '{value}'" + (nearest or f"; shipped: {', '.join(names)}"))


def train_config_for(model: str, reward_class: str) -> str | None:
    """The shipped training config (`DEFAULT_TRAIN` first, then by name) that trains `model` against a reward
    of the class named `reward_class` (`ClipScore`), or None."""
    for name in [DEFAULT_TRAIN, *shipped("train")]:
        section = (yaml.safe_load(path_of(name).read_text(encoding="utf-8")) or {}).get("model") or {}
        reward = section.get("reward") or {}
        class_path = reward.get("class_path", "") if isinstance(reward, dict) else ""
        if section.get("model") == model and class_path.rpartition(".")[2] == reward_class:
            return name
    return None
