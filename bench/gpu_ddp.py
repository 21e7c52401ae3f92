"""The GPU check's `ddp` section (`bench/gpu_check.py`): lockstep and resume of a short DDP `train.py fit`.

A 20-step fit of the tiny model with `strategy: ddp` and `bf16-mixed` on every visible GPU (NCCL; gloo and one
process on a CPU), then a resume from its last checkpoint, each in its own `train.py` process; `RankDigest`
writes every rank's start and end step and embedding digest, so the check can compare the ranks and the runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


class RankDigest(L.Callback):
    """Writes, per rank, the step it started from and the step it ended at, with the embedding's digest at
    both."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.started_at, self.start_digest = trainer.global_step, digest(pl_module.negative_embeds)

    def on_train_end(self, trainer, pl_module) -> None:
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "started_at": self.started_at,
            "start_digest": self.start_digest,
            "global_step": trainer.global_step,
            "digest": digest(pl_module.negative_embeds),
        }
        folder = Path(os.environ["RENEGX_GPU_CHECK_DIR"])
        (folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def ddp_fit(args, device, folder: Path, steps: int, resume: bool) -> list[dict]:
    probe = folder / ("resumed" if resume else "first")
    probe.mkdir(parents=True, exist_ok=True)
    devices = torch.cuda.device_count() if device.type == "cuda" else 1
    command = [
        *(
            sys.executable,
            "-m",
            "renegx.cli",
            "fit",
            "--config",
            "train/tiny",
        ),
        *("--data.prompts", "imagereward-refl", "--data.batch_size", "2", "--model.num_inference_steps", "4"),
        *("--model.stop_steps", "2", "--trainer.accelerator", "gpu" if device.type == "cuda" else "cpu"),
        *(
            "--trainer.devices",
            str(devices),
            "--trainer.strategy",
            "ddp",
            "--trainer.precision",
            "bf16-mixed",
        ),
        *("--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps)),
        *("--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false"),
        *("--trainer.logger.init_args.save_dir", str(folder / "runs")),
        *("--trainer.callbacks.init_args.every_n_train_steps", str(args.ddp_steps)),
        "--trainer.callbacks+=bench.gpu_ddp.RankDigest",
        *(("--ckpt_path", "last") if resume else ()),
    ]
    env = {**os.environ, "RENEGX_GPU_CHECK_DIR": str(probe), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "train.py failed")
    return [json.loads(path.read_text()) for path in sorted(probe.glob("rank*.json"))]


def ddp_check(args, device, report) -> None:
    """Two fits (the second resumed from the first) and one `report` row: identical ranks, a resume that
    continues."""
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        first = ddp_fit(args, device, Path(tmp), args.ddp_steps, resume=False)
        resumed = ddp_fit(args, device, Path(tmp), args.ddp_steps + args.ddp_resume_steps, resume=True)
        seconds = time.perf_counter() - began
    ends = {record["digest"] for record in first}
    report.add(
        "ddp",
        f"{len(first)} rank(s), bf16-mixed, {'NCCL' if device.type == 'cuda' else 'gloo'}",
        step_s=seconds,
        ranks_identical=len(ends) == 1 and len({record["digest"] for record in resumed}) == 1,
        resumed_from=sorted({record["started_at"] for record in resumed}),
        resumed_to=sorted({record["global_step"] for record in resumed}),
        # The resumed run starts at the first run's last step with its embedding, on every rank.
        resume_continues=len(resumed) == len(first)
        and all(record["started_at"] == args.ddp_steps for record in resumed)
        and all(record["global_step"] == args.ddp_steps + args.ddp_resume_steps for record in resumed)
        and {record["start_digest"] for record in resumed} == ends,
    )
