"""Helpers for two-process DDP runs on CPU (gloo) through `train.py`, as a user runs it.

`train_ddp` runs `train.py` with tests/ on PYTHONPATH (so probes and callbacks from here load in every rank).
`SplitCompileCheck` makes the compiled-gradient check of the first batch run on every rank (as with
`compile: true`, without compiling), rank 1's "compiled" gradient being the negative of its eager one; each
rank writes the error it stopped with to `$RENEGX_PROBE_DIR/compile-check-rank<r>.txt`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L

ROOT = Path(__file__).resolve().parents[1]


def train_ddp(cwd: Path, probe: Path, args: list[str]) -> subprocess.CompletedProcess:
    """`train.py <args>` in `cwd`, offline, one thread per rank; probes write to `probe`."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]),
        "RENEGX_PROBE_DIR": str(probe),
        "OMP_NUM_THREADS": "1",  # two ranks on shared cores: one thread each, no spinning against each other
    }
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


class SplitCompileCheck(L.Callback):
    def setup(self, trainer, pl_module, stage: str) -> None:
        pl_module._compiled_gradient_checked = False
        if trainer.global_rank != 1:
            return
        original, signs = pl_module.step_loss, iter([1.0, -1.0])

        def flipped(*args):
            loss, rewards = original(*args)
            return next(signs, 1.0) * loss, rewards

        pl_module.step_loss = flipped

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        folder = Path(os.environ["RENEGX_PROBE_DIR"])
        (folder / f"compile-check-rank{trainer.global_rank}.txt").write_text(str(exception))
