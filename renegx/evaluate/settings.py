"""What an evaluation run does: its settings, from a YAML config and/or the command line.

One parser (jsonargparse, as every renegx job): the command line wins over `--config`; every key of the config
is an option name with `_` for `-` (`guidance_scale: 7.5`), and `--print_config` shows the merge. Two keys
take richer YAML than their options: `negatives` may map folder names to specs
(`{learned: runs/a/negative.safetensors}`), and `judges` may map judge names to constructor options
(`{clip: {model: tiny}}`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from renegx.cli.terminal import (
    add_device,
    add_negative_options,
    add_sampling_options,
    add_seeds,
    job_parser,
    parse_job_args,
    parse_seeds,
)
from renegx.errors import RenegxError
from renegx.evaluate.judges import known_judges
from renegx.negatives.spec import drawn_as_recorded

STAGES = ("generate", "score", "report")
EMBEDDING_SUFFIXES = (".safetensors", ".bin")
LABEL = re.compile(r"^[A-Za-z0-9_.-]+$")


class SettingsError(RenegxError):
    """A bad evaluation setting or config file; the message is one line."""


NOISES = ("shared", "per-prompt")


@dataclass
class EvaluationSettings:
    """Every setting of a run; `negatives` maps a folder name (label) to its spec, in report order."""

    model: str = ""
    model_config: str | None = None  # the diffusers folder a single-file model is read with
    negatives: dict[str, str] = field(default_factory=dict)
    benchmark: str = ""
    out: str = ""
    judges: list[str] | None = None  # None: the benchmark's natural judges
    judge_options: dict[str, dict] = field(default_factory=dict)  # judge name or "*" -> options
    seeds: list[int] = field(default_factory=lambda: [0])
    noise: str = (
        "shared"  # "shared": a seed's noise for every prompt; "per-prompt": `noise_seed(seed, index)`
    )
    sampler: str | None = None  # None: the diffusers pipeline, batched
    sampler_config: str | None = None
    sampler_options: dict = field(default_factory=dict)
    steps: int = 30
    guidance_scale: float = 7.5
    batch_size: int = 4
    height: int | None = None
    width: int | None = None
    clip_skip: int | None = None
    device: str = "auto"
    threads: int | None = None  # CPU threads; None: `default_threads()`
    dtype: str = "float32"
    bank_fallback: str = "global"
    strict_encoder: bool = False  # refuse a negative whose text encoder fingerprint differs from the model's
    limit: int | None = None
    hpsv2_prompts: str | None = None
    baseline: str | None = None  # a label or a spec; None: the first negative
    bootstrap: int = 2000
    bootstrap_seed: int = 0
    grid_prompts: int = 4
    jpeg_quality: int = 95
    stages: list[str] = field(default_factory=lambda: list(STAGES))

    def baseline_label(self) -> str:
        if self.baseline is None:
            return next(iter(self.negatives))
        if self.baseline in self.negatives:
            return self.baseline
        for label, spec in self.negatives.items():
            if spec == self.baseline:
                return label
        raise SettingsError(
            f"--baseline '{self.baseline}' is none of the negatives: {', '.join(self.negatives)}"
        )

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def evaluate_parser(prog: str = "renegx evaluate"):
    parser = job_parser(
        prog, "Evaluate negatives on a benchmark: generate, score with several judges, report."
    )
    add = parser.add_argument
    add_sampling_options(parser)
    add_negative_options(parser, many=True)
    add("--benchmark", help="hpsv2 | parti | imagereward | toyworld | a prompt file")
    add(
        "--judges",
        type=str | list[str] | dict[str, dict | None],
        help=f"comma-separated judges among {', '.join(known_judges())} (null: the benchmark's own, e.g. "
        "hpsv2.1,pickscore,imagereward); in a config a list, or a mapping of judge names to their options",
    )
    add("--judge-opt", action="append", default=[], metavar="[JUDGE:]KEY=VALUE", help="a judge option")
    add_seeds(parser, what="each prompt is drawn once per seed with every negative")
    add(
        "--noise",
        choices=NOISES,
        default="shared",
        help="shared: seed s gives every prompt the same noise; per-prompt: prompt i of a set draws from "
        "seed s × 1000 + i, as the training's held-out table does (the same for every negative either way)",
    )
    add_device(parser)
    add(
        "--limit",
        type=int | None,
        help="only the first N prompts of each style/set (a quick, non-protocol run)",
    )
    add("--hpsv2-prompts", help="folder with anime.json, concept-art.json, paintings.json, photo.json")
    add("--baseline", help="the negative others are compared with (null: the first)")
    add("--bootstrap", type=int, default=2000, help="bootstrap resamples of the 95% intervals")
    add("--bootstrap-seed", type=int, default=0)
    add("--grid-prompts", type=int, default=4, help="prompts per image grid in the report")
    add("--jpeg-quality", type=int, default=95, help="of the report's image grids")
    add(
        "--stages",
        type=str | list[str],
        default=",".join(STAGES),
        help="comma-separated subset of generate,score,report (each resumes from what exists)",
    )
    add("--out", help="output folder: images, score caches, report")
    return parser


def parse_evaluate_args(argv: list[str] | None = None, prog: str = "renegx evaluate"):
    return parse_job_args(evaluate_parser(prog), argv)


def settings_from_args(args) -> EvaluationSettings:
    """Checked settings from the parsed options (the config file and the command line, merged)."""
    given = args.as_dict()
    fields = {f.name for f in dataclasses.fields(EvaluationSettings)}
    values = {key: value for key, value in given.items() if key in fields and value is not None}
    values["negatives"] = given.get("negatives") or []
    if given.get("negative_list"):  # adds to --negatives / the config's
        values["negatives"] = add_negatives(values["negatives"], given["negative_list"])
    if isinstance(values.get("judges"), str):
        values["judges"] = [name.strip() for name in values["judges"].split(",") if name.strip()]
    settings = _build(values)
    for option in given.get("judge_opt") or []:
        judge, key, value = parse_judge_option(option)
        settings.judge_options.setdefault(judge, {})[key] = value
    if given.get("sampler_opt"):
        from renegx.samplers.config import parse_overrides

        settings.sampler_options.update(parse_overrides(given["sampler_opt"]))
    return settings


def _build(values: dict) -> EvaluationSettings:
    """Settings from merged raw values, each checked with a one-line error."""
    values = dict(values)
    values["negatives"] = label_negatives(values["negatives"])
    values["steps"], values["guidance_scale"] = drawn_as_recorded(
        list(values["negatives"].values()), values.get("steps"), values.get("guidance_scale")
    )
    if isinstance(values.get("judges"), dict):
        judges = values["judges"]
        values["judges"] = list(judges)
        values["judge_options"] = {name: dict(options or {}) for name, options in judges.items()}
    values["seeds"] = parse_seeds(values["seeds"], "--seeds", SettingsError)
    values["stages"] = parse_stages(values["stages"])
    settings = EvaluationSettings(**values)
    for name in ("model", "benchmark", "out"):
        if not getattr(settings, name):
            raise SettingsError(f"--{name} is required (on the command line or in --config)")
    if not settings.negatives:
        raise SettingsError("--negatives is required: e.g. --negatives null,negative.safetensors")
    for name, low in (("steps", 1), ("batch_size", 1), ("bootstrap", 1), ("grid_prompts", 0)):
        if getattr(settings, name) < low:
            raise SettingsError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(settings, name)}")
    if settings.judges is not None and not settings.judges:
        raise SettingsError("--judges is empty")
    settings.baseline_label()
    return settings


def parse_stages(value) -> list[str]:
    stages = [s.strip() for s in value.split(",")] if isinstance(value, str) else list(value)
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        raise SettingsError(f"unknown stage '{bad[0] if bad else ''}'; stages: {', '.join(STAGES)}")
    return stages


def parse_judge_option(option: str) -> tuple[str, str, object]:
    """`[JUDGE:]KEY=VALUE` as (judge or "*", key, YAML-parsed value)."""
    target, sep, raw = option.partition("=")
    judge, colon, key = target.rpartition(":")
    if not sep or not key.strip():
        raise SettingsError(f"--judge-opt must be [JUDGE:]KEY=VALUE, got '{option}'")
    return (judge.strip() if colon else "*"), key.strip(), yaml.safe_load(raw) if raw else ""


def _without_label(piece: str) -> str:
    """`NAME=SPEC` → SPEC; anything else unchanged (a text negative may hold '=' after 'text:')."""
    label, sep, spec = piece.partition("=")
    return spec if sep and LABEL.match(label) else piece


def _looks_like_spec(piece: str) -> bool:
    """Whether a comma-separated piece starts a new negative (else it continues a `text:` negative)."""
    spec = _without_label(piece)
    return spec in ("none", "null") or spec.startswith(("text:", "ti:")) or spec.endswith(EMBEDDING_SUFFIXES)


def split_negatives(text: str) -> list[str]:
    """Split `--negatives` at commas, keeping commas inside a text negative (`text:blurry, ugly,null` gives
    `["text:blurry, ugly", "null"]`); a piece that is not none/null/text:/ti:/a .safetensors or .bin file
    continues the text negative before it."""
    specs: list[str] = []
    for raw in text.split(","):
        piece = raw.strip()
        if specs and _without_label(specs[-1]).startswith("text:") and not _looks_like_spec(piece):
            specs[-1] = f"{specs[-1]},{raw}"
        elif piece:
            specs.append(piece)
    return specs


def negative_label(spec: str) -> str:
    """The folder name of a negative: none, null, `text-<words>`, `ti-<stem>`, or an embedding file's stem."""
    if spec in ("none", "null"):
        return spec
    if spec.startswith("ti:"):
        return "ti-" + negative_label(spec[len("ti:") :])
    if spec.startswith("text:"):
        words = re.sub(r"[^a-z0-9]+", "-", spec[len("text:") :].lower()).strip("-")
        return f"text-{words[:48].rstrip('-')}" if words else "text"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(spec).stem).strip("-.") or "embedding"


def _spec_text(spec) -> str:
    """A YAML value as a negative's spec or name: YAML reads a bare `null` as None, here the null negative."""
    return "null" if spec is None else str(spec)


def add_negatives(negatives, added: list[str]) -> dict[str, str]:
    """`negatives` (as `label_negatives` takes them) with each `--negative` added after them; a name already
    given to another negative is refused, the same negative given twice is kept once."""
    labelled = label_negatives(negatives)
    for label, spec in label_negatives(added).items():
        if labelled.get(label, spec) != spec:
            raise SettingsError(
                f"--negative {label}={spec}: the name '{label}' is taken by the configured negative "
                f"'{labelled[label]}'; pick another NAME, or replace the list with --negatives"
            )
        labelled[label] = spec
    return labelled


def label_negatives(negatives) -> dict[str, str]:
    """Negatives (a list of specs, `label=spec` strings, or a label → spec mapping) as label → spec."""
    if isinstance(negatives, str):
        negatives = split_negatives(negatives)
    if isinstance(negatives, dict):
        pairs = [(_spec_text(label), _spec_text(spec)) for label, spec in negatives.items()]
    elif isinstance(negatives, list):
        pairs = []
        for entry in map(_spec_text, negatives):
            spec = _without_label(entry)
            named = spec != entry and _looks_like_spec(spec)
            pairs.append((entry.partition("=")[0], spec) if named else (negative_label(entry), entry))
    else:
        raise SettingsError(f"negatives must be a list or a mapping, got a {type(negatives).__name__}")
    labelled: dict[str, str] = {}
    for label, spec in pairs:
        if not LABEL.match(label) or label.startswith("."):
            raise SettingsError(f"negative name '{label}' must be letters, digits, '_', '-' or '.'")
        if label in labelled:
            raise SettingsError(
                f"negatives '{labelled[label]}' and '{spec}' would share the folder '{label}'; "
                "name them: --negative NAME=SPEC"
            )
        labelled[label] = spec
    return labelled
