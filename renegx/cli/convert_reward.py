"""Convert a pickled upstream checkpoint (`HPS_v2.1_compressed.pt`, `ImageReward.pt`, an aesthetic `.pth`) to
safetensors, once, so it never has to be unpickled again.

renegx convert-reward HPS_v2.1_compressed.pt     # → HPS_v2.1_compressed.safetensors beside it
renegx convert-reward ImageReward.pt out/ImageReward.safetensors
renegx convert-reward old.pt --trust-pickle      # only for a file you trust (see below)

The file is read with `torch.load(weights_only=True)`, which only rebuilds tensors and plain containers. A
file that needs more (arbitrary classes: unpickling it can run any code) is refused unless `--trust-pickle`
is given. A nested `state_dict`/`model` entry is unwrapped; names are kept (the backends map them).
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import torch

from renegx import __version__
from renegx.cli.terminal import OneLineArgumentParser, run_printing_path
from renegx.errors import RenegxError, first_line
from renegx.files import atomic_path
from renegx.rewards.loading import needs_full_unpickling, unwrap_state_dict


def read_checkpoint(path: Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The flat tensor state dict of a PyTorch checkpoint; full unpickling only with `trust_pickle`."""
    if not path.is_file():
        raise RenegxError(f"checkpoint not found: {path}")
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not needs_full_unpickling(error):
            raise RenegxError(
                f"cannot read {path}: not a PyTorch checkpoint ({first_line(error)})"
            ) from error
        if not trust_pickle:
            raise RenegxError(
                f"{path} needs full unpickling, which can run arbitrary code; "
                "re-run with --trust-pickle only if you trust where the file came from"
            ) from error
        print(f"renegx: unpickling {path} in full (--trust-pickle)", file=sys.stderr)
        loaded = torch.load(str(path), map_location="cpu", weights_only=False)
    return unwrap_state_dict(loaded, str(path))


def convert_reward_checkpoint(source: Path, target: Path | None = None, trust_pickle: bool = False) -> Path:
    """Write the tensors of `source` to `target` (default: same name, `.safetensors`) atomically."""
    from safetensors.torch import save_file

    target = target or source.with_suffix(".safetensors")
    state_dict = read_checkpoint(source, trust_pickle)
    storages: set[int] = set()
    tensors = {}
    for name, tensor in state_dict.items():  # safetensors refuses tensors that share memory
        storage = tensor.untyped_storage().data_ptr()
        shared = storage in storages and tensor.numel() > 0
        tensors[name] = tensor.clone(memory_format=torch.contiguous_format) if shared else tensor.contiguous()
        storages.add(storage)
    metadata = {"format": "pt", "source": source.name, "converted_by": f"renegx {__version__}"}
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
    return target


def main(argv: list[str] | None = None, prog: str = "renegx convert-reward") -> int:
    parser = OneLineArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the .pt/.pth/.bin checkpoint")
    parser.add_argument(
        "target", type=Path, nargs="?", help="output .safetensors (default: beside the source)"
    )
    parser.add_argument("--trust-pickle", action="store_true", help="allow full unpickling of a trusted file")

    def convert():
        args = parser.parse_args(argv)
        return convert_reward_checkpoint(args.source, args.target, args.trust_pickle)

    return run_printing_path(convert)


if __name__ == "__main__":
    sys.exit(main())
