"""Fetch everything a training config needs into one folder, so runs work with `HF_HUB_OFFLINE=1`.

renegx weights --config train/sd15_hpsv2     # into ./weights
renegx weights --config train/sd15_mix --out /data/weights
HF_HUB_OFFLINE=1 renegx weights --config train/sd15_hpsv2  # says what it would fetch

It reads the config's base model and reward(s) (mixtures included), downloads just the files they load
(diffusers folders, reward checkpoints, tokenizers, processor settings, the aesthetic head), writes
`<out>/<config name>.offline.yaml` (the same config pointing at the local copies) and prints the overrides.
Offline, nothing is downloaded: it lists each file, whether it is already in `--out`, and how to get it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import inspect
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from renegx.configs import resolve
from renegx.errors import RenegxError, first_line
from renegx.files import atomic_path, atomic_write_text
from renegx.models.loading import offline as hub_offline
from renegx.rewards.hpsv2 import HPS_FILES, HPS_REPO
from renegx.rewards.hpsv3 import HPSV3_FILE, HPSV3_REPO
from renegx.rewards.image_reward import IMAGEREWARD_FILES

DIFFUSERS_FILES = [
    "model_index.json",
    "*/*.json",
    "*/*.txt",
    "*/diffusion_pytorch_model.safetensors",
    "*/model.safetensors",
    "*/*-of-*.safetensors",  # sharded weights (SD3.5's T5-XXL, its large transformer), with their index json
    "*/spiece.model",  # T5's SentencePiece tokenizer (SD3's tokenizer_3)
]
TOKENIZER_FILES = ["tokenizer*", "vocab.json", "vocab.txt", "merges.txt", "special_tokens_map.json"]
PROCESSOR_FILES = [*TOKENIZER_FILES, "preprocessor_config.json"]
CLIP_FILES = ["config.json", "model.safetensors", *PROCESSOR_FILES]
# HPSv3.safetensors holds every weight: of its Qwen2-VL base only the config, tokenizer and image settings.
QWEN2_VL_BASE_FILES = ["config.json", *PROCESSOR_FILES]


@dataclass(frozen=True)
class Need:
    """Files of one hub repo (or one URL) that the config key `key` should point at once local."""

    key: str  # dotted path inside the config, e.g. model.reward.init_args.model
    source: str  # a hub repo id, or a URL
    files: tuple[str, ...]  # hub file names or glob patterns; empty for a URL
    pick: str | None = None  # a single file the key points at (else the folder)

    def folder(self, root: Path) -> Path:
        if self.is_url:
            return root / "urls"
        return root / self.source.replace("/", "--")

    @property
    def is_url(self) -> bool:
        return self.source.startswith(("http://", "https://"))

    def local_path(self, root: Path) -> Path:
        if self.is_url:
            return self.folder(root) / self.source.rsplit("/", 1)[-1]
        return self.folder(root) / self.pick if self.pick else self.folder(root)


def _is_hub_id(value: object) -> bool:
    return isinstance(value, str) and value.count("/") == 1 and not Path(value).expanduser().exists()


def _reward_needs(node: dict, key: str) -> list[Need]:
    """What one `{class_path, init_args}` reward node (recursively, for mixtures) loads from the hub."""
    module, _, name = node["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    args = inspect.signature(cls).bind_partial(**(node.get("init_args") or {}))
    args.apply_defaults()
    a, at = args.arguments, f"{key}.init_args"
    if name == "RewardMixture":
        return [n for i, child in enumerate(a["rewards"]) for n in _reward_needs(child, f"{at}.rewards.{i}")]
    if a.get("model") == "tiny":
        return []
    needs = []
    if name == "HPSv2":
        if a["model"] in HPS_FILES:
            needs.append(Need(f"{at}.model", HPS_REPO, (HPS_FILES[a["model"]],), HPS_FILES[a["model"]]))
        if _is_hub_id(a["tokenizer"]):
            needs.append(Need(f"{at}.tokenizer", a["tokenizer"], tuple(TOKENIZER_FILES)))
    elif name == "HPSv3":
        if a["model"] == f"{HPSV3_REPO}/{HPSV3_FILE}":
            needs.append(Need(f"{at}.model", HPSV3_REPO, (HPSV3_FILE,), HPSV3_FILE))
        if _is_hub_id(a["base"]):
            needs.append(Need(f"{at}.base", a["base"], tuple(QWEN2_VL_BASE_FILES)))
    elif name == "ImageReward":
        if _is_hub_id(a["model"]):
            needs.append(Need(f"{at}.model", a["model"], IMAGEREWARD_FILES))
        if _is_hub_id(a["tokenizer"]):
            needs.append(Need(f"{at}.tokenizer", a["tokenizer"], tuple(TOKENIZER_FILES)))
    elif name == "PickScore":
        if _is_hub_id(a["model"]):
            needs.append(Need(f"{at}.model", a["model"], ("config.json", "model.safetensors")))
        if _is_hub_id(a["processor"]):
            needs.append(Need(f"{at}.processor", a["processor"], tuple(PROCESSOR_FILES)))
    elif name in ("LaionAesthetic", "ClipScore"):
        if _is_hub_id(a["model"]):
            needs.append(Need(f"{at}.model", a["model"], tuple(CLIP_FILES)))
        head = a.get("head")
        if isinstance(head, str) and head.startswith(("http://", "https://")):
            needs.append(Need(f"{at}.head", head, ()))
    else:
        raise RenegxError(
            f"renegx.cli.weights does not know what {node['class_path']} loads; fetch its files by hand"
        )
    return needs


def config_needs(config: dict) -> list[Need]:
    """Every download a parsed training config needs (base model and rewards)."""
    model = config.get("model") or {}
    needs = []
    if _is_hub_id(model.get("model")):
        needs.append(Need("model.model", model["model"], tuple(DIFFUSERS_FILES)))
    if isinstance(model.get("reward"), dict):
        needs += _reward_needs(model["reward"], "model.reward")
    return needs


def _present(need: Need, root: Path) -> bool:
    path = need.local_path(root)
    return path.is_file() if (need.is_url or need.pick) else path.is_dir() and any(path.iterdir())


def _how(need: Need) -> str:
    if need.is_url:
        return f"download {need.source}"
    if need.pick:
        return f"hf download {need.source} {' '.join(need.files)}"
    # only the files a reward loads: a base such as Qwen2-VL-7B-Instruct is 16 GB of weights it does not need
    return f"hf download {need.source} --include {' '.join(shlex.quote(f) for f in need.files)}"


def fetch(need: Need, root: Path) -> None:
    import urllib.request

    from huggingface_hub import snapshot_download

    folder = need.folder(root)
    folder.mkdir(parents=True, exist_ok=True)
    if need.is_url:
        with (
            urllib.request.urlopen(need.source, timeout=60) as response,
            atomic_path(need.local_path(root)) as tmp,
        ):
            tmp.write_bytes(response.read())
        return
    snapshot_download(need.source, allow_patterns=list(need.files), local_dir=str(folder))


def _remove_if_empty(*folders: Path) -> None:
    """Remove each of `folders` that a failed download left empty (a rerun finds no half-made folder)."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _set(config: dict, dotted: str, value: str) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    node[leaf] = value


def main(argv: list[str] | None = None, prog: str = "renegx weights") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a training config (train/NAME or a YAML file)")
    parser.add_argument(
        "--out", type=Path, default=Path("weights"), help="the folder to fill (default ./weights)"
    )
    args = parser.parse_args(argv)
    named = args.config
    try:
        args.config = resolve(args.config, "train")
        config = yaml.safe_load(args.config.read_text()) or {}
        needs = config_needs(config)
    except (OSError, yaml.YAMLError, RenegxError, ImportError, AttributeError, KeyError, TypeError) as error:
        print(f"renegx: error: cannot read what {args.config} needs: {error}", file=sys.stderr)
        return 2
    if not needs:
        print(f"{args.config} needs no downloads")
        return 0
    root = args.out.resolve()
    missing = [need for need in needs if not _present(need, root)]
    if hub_offline() and missing:
        print(f"HF_HUB_OFFLINE is set: nothing downloaded. {args.config} needs, under {root}:")
        for need in needs:
            state = "present" if need not in missing else f"missing — {_how(need)}"
            print(f"  {need.key}: {need.local_path(root)} ({state})")
        print(f"Run `renegx weights --config {args.config} --out {args.out}` with the hub reachable.")
        return 1
    existed = root.exists()
    for need in missing:
        print(f"fetching {need.source} → {need.folder(root)}", file=sys.stderr)
        try:
            fetch(need, root)
        except OSError as error:  # no network, the hub refusing, a file it does not hold
            _remove_if_empty(need.folder(root), *([] if existed else [root]))
            print(
                f"renegx: error: cannot fetch {need.source}: {first_line(error)} (is the hub reachable? "
                f"HF_HUB_OFFLINE=1 renegx weights --config {named} lists what it needs)",
                file=sys.stderr,
            )
            return 2
    offline = copy.deepcopy(config)
    for need in needs:
        _set(offline, need.key, str(need.local_path(root)))
    written = root / f"{args.config.stem}.offline.yaml"
    header = f"# renegx fit --config {written}\n# offline copy of {args.config} (renegx weights)\n"
    atomic_write_text(written, header + yaml.safe_dump(offline, sort_keys=False))
    print(f"all files are in {root}; run offline with:")
    print(f"  HF_HUB_OFFLINE=1 renegx fit --config {written}")
    print("or set these keys in your config (as command-line overrides where they hold no list index):")
    for need in needs:
        print(f"  --{need.key} {need.local_path(root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
