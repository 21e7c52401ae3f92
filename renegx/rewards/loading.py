"""Finding and loading reward weights: local first, hub or URL only when online, no pickle by default.

Every backend names what it needs as a local path, a hub id (`owner/name`), a hub file (`owner/name/file`) or
a URL. With `HF_HUB_OFFLINE=1` nothing is downloaded, and a missing file fails with one line that names the
file and how to get it. Models in a folder or under a hub id load the one way every model does
(`renegx.models.loading`), failing with a `RewardError`. Checkpoints load from safetensors, or from a PyTorch
file with `torch.load(weights_only=True)`; a file that needs full unpickling is refused (see
`renegx.cli.convert_reward`).
"""

from __future__ import annotations

import os
import pickle
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from renegx.errors import first_line
from renegx.files import atomic_path
from renegx.models import loading
from renegx.models.loading import offline
from renegx.rewards.base import RewardError

GET_WEIGHTS = "renegx weights --config <your config> (online) fetches every file a config needs"


def cache_dir() -> Path:
    """Where URL downloads go: `$RENEGX_CACHE`, else `~/.cache/renegx`."""
    return Path(os.environ.get("RENEGX_CACHE", Path.home() / ".cache" / "renegx")).expanduser()


def local_folder(name: str, what: str) -> Path | None:
    """`name` as an existing local folder; None for a hub id; a one-line error for a missing local path."""
    source, _ = loading.source_of(name, RewardError, what)
    folder = Path(source)
    return folder if folder.is_dir() else None


def load_pretrained(cls, name: str, what: str, **kwargs):
    """`cls.from_pretrained(name)` from a local folder or a hub id (cache only when offline); a bad name or
    file fails as one `RewardError` line."""
    return loading.from_pretrained(cls, name, what, error=RewardError, **kwargs)


def fetch_file(spec: str, what: str) -> Path:
    """A local file for `spec`: a local path, `owner/name/filename` on the hub, or an http(s) URL.

    Hub files come from the hub cache, URLs from `cache_dir()`; neither is downloaded when offline.
    """
    if spec.startswith(("http://", "https://")):
        return _fetch_url(spec, what)
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    parts = spec.split("/")
    explicit = spec.startswith(("/", "./", "../", "~")) or (os.sep != "/" and os.sep in spec)
    if explicit or len(parts) < 3 or Path(parts[0]).exists():
        raise RewardError(f"{what} file not found: {spec}")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename, local_files_only=offline()))
    except Exception as error:  # the hub raises several unrelated types for "not there"
        raise RewardError(
            f"{what} file {filename} of {repo} is not available ({first_line(error)}); "
            f"get it with: hf download {repo} {filename} — or {GET_WEIGHTS}"
        ) from error


def _fetch_url(url: str, what: str) -> Path:
    target = cache_dir() / url.rsplit("/", 1)[-1]
    if target.is_file():
        return target
    if offline():
        raise RewardError(
            f"{what} file {target.name} is not in {target.parent} and HF_HUB_OFFLINE is set; "
            f"download {url} there, pass its local path, or run {GET_WEIGHTS}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, atomic_path(target) as temporary:
            Path(temporary).write_bytes(response.read())
    except OSError as error:
        raise RewardError(f"cannot download {what} from {url} ({first_line(error)})") from error
    return target


def load_state_dict(path: str | Path, what: str) -> dict[str, Tensor]:
    """Tensors of a safetensors or PyTorch checkpoint; a nested `state_dict`/`model` entry is unwrapped.

    PyTorch files load with `weights_only=True`; a file that needs arbitrary unpickling is refused with a
    pointer to `renegx convert-reward ... --trust-pickle`.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own error type for a corrupt header
            raise RewardError(f"cannot read {what} {path} ({first_line(error)})") from error
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not needs_full_unpickling(error):
            raise RewardError(f"cannot read {what} {path} ({first_line(error)})") from error
        raise RewardError(
            f"{what} {path} needs full unpickling, which can run arbitrary code; if you trust it, run: "
            f"renegx convert-reward {path} --trust-pickle"
        ) from error
    except (OSError, RuntimeError, EOFError) as error:
        raise RewardError(f"cannot read {what} {path} ({first_line(error)})") from error
    return unwrap_state_dict(loaded, f"{what} {path}")


def needs_full_unpickling(error: pickle.UnpicklingError) -> bool:
    """Whether `torch.load(weights_only=True)` failed on a valid pickle that references other classes."""
    return "Unsupported global" in str(error)


def unwrap_state_dict(loaded, what: str) -> dict[str, Tensor]:
    """The flat name → tensor mapping inside a loaded checkpoint (`{"state_dict": {...}}` and the like)."""
    for key in ("state_dict", "model", "module"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise RewardError(f"{what} holds no flat state dict of tensors")
    return dict(loaded)


def check_state_dict(
    expected: Mapping[str, Tensor], found: Mapping[str, Tensor], what: str, limit: int = 5
) -> None:
    """Raise one line naming missing, unexpected and mis-shaped keys when `found` does not fit `expected`."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(
        f"{k} {tuple(found[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(expected) & set(found)
        if found[k].shape != expected[k].shape
    )
    problems = []
    for label, keys in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatch", shapes),
    ):
        if keys:
            shown = ", ".join(keys[:limit]) + (f", … ({len(keys)} in all)" if len(keys) > limit else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise RewardError(f"{what} does not fit the expected architecture; " + "; ".join(problems))


def build_empty(model_class, config):
    """`model_class(config)` without random initialisation (every weight is loaded right after)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights
    with no_init_weights():
        return model_class(config)


def load_weights(model: torch.nn.Module, state_dict: Mapping[str, Tensor], what: str) -> None:
    """Strictly load `state_dict` into `model`, first reporting any key or shape mismatch in one line."""
    check_state_dict(model.state_dict(), state_dict, what)
    model.load_state_dict(state_dict, strict=True)
