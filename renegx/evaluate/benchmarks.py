"""The prompt sets an evaluation runs on, each a list of items `(group, index, prompt, tags)`.

| benchmark | groups (image folders) | breakdowns | prompts |
|---|---|---|---|
| `hpsv2` | anime, concept-art, paintings, photo | style | 4 × 800, HF dataset `zhwang/HPDv2` `benchmark/` |
| `parti` | parti | category, challenge | 1,632, shipped (`renegx/prompts/PartiPrompts.tsv`) |
| `imagereward` | imagereward | — | 100, shipped (ImageReward `benchmark-prompts.json`) |
| `toyworld` | toyworld | — | the toy world's held-out prompts (`renegx.toyworld`) |
| `<file>` | the file's stem | — | any prompt file `renegx.prompts.read_prompts` reads |

The HPSv2 prompts are not redistributable with the package; they come from `--hpsv2-prompts DIR` (a folder
with `anime.json`, `concept-art.json`, `paintings.json`, `photo.json`), else the hpsv2 package's cache
(`$HPS_ROOT/datasets/benchmark`, default `~/.cache/hpsv2`), else the Hugging Face hub (its cache, or a
download when online).
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from renegx.errors import RenegxError
from renegx.prompts import read_prompts, resolve_prompt_source

HPS_STYLES = ("anime", "concept-art", "paintings", "photo")
HPS_DATASET = "zhwang/HPDv2"
HPS_PROMPTS_PER_STYLE = 800
BUILTIN_BENCHMARKS = ("hpsv2", "parti", "imagereward", "toyworld")


class BenchmarkError(RenegxError):
    """A benchmark that cannot be loaded; the message is one line saying how to fix it."""


@dataclass(frozen=True)
class BenchmarkItem:
    """One prompt of a benchmark: its image folder (`group`, e.g. a HPSv2 style), its index in that folder's
    prompt list (the image file name), the prompt, and tags to break results down by (e.g. Parti category)."""

    group: str
    index: int
    prompt: str
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class Benchmark:
    """A named prompt set; `breakdowns` are the keys results are split by ("style", "category", ...)."""

    name: str
    items: list[BenchmarkItem]
    breakdowns: tuple[str, ...] = ()
    complete: bool = True  # every prompt of the official set (False after --limit)

    def groups(self) -> dict[str, list[BenchmarkItem]]:
        grouped: dict[str, list[BenchmarkItem]] = {}
        for item in self.items:
            grouped.setdefault(item.group, []).append(item)
        return grouped

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "breakdowns": list(self.breakdowns),
            "complete": self.complete,
            "items": [
                {"group": i.group, "index": i.index, "prompt": i.prompt, "tags": i.tags} for i in self.items
            ],
        }

    @classmethod
    def from_json(cls, data: dict) -> Benchmark:
        items = [BenchmarkItem(i["group"], i["index"], i["prompt"], dict(i["tags"])) for i in data["items"]]
        return cls(data["name"], items, tuple(data["breakdowns"]), bool(data["complete"]))


def load_benchmark(name: str, hpsv2_prompts: str | None = None, limit: int | None = None) -> Benchmark:
    """The benchmark `name` (see the module docstring); `limit` keeps the first N prompts of each group."""
    if limit is not None and limit < 1:
        raise BenchmarkError(f"--limit must be >= 1, got {limit}")
    if name == "hpsv2":
        folder = hpsv2_prompt_folder(hpsv2_prompts)
        groups = {style: _hps_style_prompts(folder / f"{style}.json") for style in HPS_STYLES}
        benchmark = _from_groups("hpsv2", groups, ("style",))
        benchmark.complete = all(len(prompts) == HPS_PROMPTS_PER_STYLE for prompts in groups.values())
    elif name == "parti":
        benchmark = _parti()
    elif name == "imagereward":
        benchmark = _from_groups(name, {name: read_prompts("imagereward-benchmark")}, ())
    elif name == "toyworld":
        benchmark = _from_groups(name, {name: toyworld_prompts()}, ())
    elif Path(name).expanduser().is_file():
        path = Path(name).expanduser()
        group = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem).strip("-.") or "prompts"
        benchmark = _from_groups(str(path), {group: read_prompts(path)}, ())
    else:
        raise BenchmarkError(
            f"unknown benchmark '{name}': give {', '.join(BUILTIN_BENCHMARKS)} or a prompt file "
            "(.txt, .json, .jsonl, .tsv)"
        )
    if limit is None:
        return benchmark
    grouped = benchmark.groups()
    kept = [item for items in grouped.values() for item in items[:limit]]
    complete = benchmark.complete and all(len(items) <= limit for items in grouped.values())
    return Benchmark(benchmark.name, kept, benchmark.breakdowns, complete)


def _from_groups(name: str, groups: dict[str, list[str]], breakdowns: tuple[str, ...]) -> Benchmark:
    items = [
        BenchmarkItem(group, index, prompt, {"style": group} if "style" in breakdowns else {})
        for group, prompts in groups.items()
        for index, prompt in enumerate(prompts)
    ]
    return Benchmark(name, items, breakdowns)


def _parti() -> Benchmark:
    path = resolve_prompt_source("parti")
    # QUOTE_NONE: TSV has no quoting, and some prompts start with a quote character.
    rows = csv.DictReader(
        path.read_text(encoding="utf-8").splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE
    )
    items = [
        BenchmarkItem(
            "parti",
            index,
            row["Prompt"].strip(),
            {"category": row["Category"], "challenge": row["Challenge"]},
        )
        for index, row in enumerate(rows)
    ]
    return Benchmark("parti", items, ("category", "challenge"))


def toyworld_prompts() -> list[str]:
    """The toy world's held-out prompts (a one-line error when its weights are missing)."""
    from renegx.toyworld import benchmark_prompts

    return list(benchmark_prompts())


def hpsv2_prompt_folder(explicit: str | None = None) -> Path:
    """The folder of the four HPSv2 style files: `explicit`, the hpsv2 cache, or the hub (cache/download)."""
    if explicit is not None:
        folder = Path(explicit).expanduser()
        missing = [f"{s}.json" for s in HPS_STYLES if not (folder / f"{s}.json").is_file()]
        if missing:
            raise BenchmarkError(f"--hpsv2-prompts {explicit} lacks {', '.join(missing)}; {_HOW_TO_GET}")
        return folder
    hps_root = Path(os.environ.get("HPS_ROOT", "~/.cache/hpsv2")).expanduser() / "datasets" / "benchmark"
    if all((hps_root / f"{s}.json").is_file() for s in HPS_STYLES):
        return hps_root
    return _hub_prompt_folder()


_HOW_TO_GET = (
    f"get them with: hf download {HPS_DATASET} --repo-type dataset --include 'benchmark/*.json' "
    "--local-dir DIR, then pass --hpsv2-prompts DIR/benchmark"
)


def _hub_prompt_folder() -> Path:
    from huggingface_hub import hf_hub_download

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    try:
        paths = [
            Path(
                hf_hub_download(
                    HPS_DATASET, f"benchmark/{s}.json", repo_type="dataset", local_files_only=offline
                )
            )
            for s in HPS_STYLES
        ]
    except Exception as error:  # the hub raises several unrelated types for "not there"
        reason = "offline and not in the hub cache" if offline else str(error).splitlines()[0]
        raise BenchmarkError(f"HPSv2 benchmark prompts are not available ({reason}); {_HOW_TO_GET}") from None
    return paths[0].parent


def _hps_style_prompts(path: Path) -> list[str]:
    try:
        prompts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise BenchmarkError(f"HPSv2 prompt file {path} cannot be read: {err}") from None
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise BenchmarkError(f"HPSv2 prompt file {path} is not a JSON list of strings")
    # Kept verbatim: the image name is the prompt's index, so nothing may be dropped or reordered.
    return prompts
