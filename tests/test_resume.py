"""Exact resume: a run killed with SIGKILL at random points and resumed with `--ckpt_path last` each time ends
with the same embedding, bit for bit, as a run that was never interrupted."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from renegx.configs import path_of
from renegx.train.data import PromptDataModule, ResumableShuffleSampler

ROOT = Path(__file__).resolve().parents[1]
STEPS = 14
KILLS = 5
PROMPTS = ["a red circle", "a blue square", "a green star", "a big tree", "a small cat", "a dog", "a house"]


def _train(tmp: Path, name: str, *extra: str) -> subprocess.Popen:
    """Start `train.py fit` on configs/train/tiny.yaml cut down to seconds: 5 training prompts in batches of 2
    (3 batches an epoch, so runs cross epochs), DDIM 4, validation every 5 batches, a checkpoint each step."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    args = [
        *("fit", "--config", str(path_of("train/tiny"))),
        *("--data.prompts", "prompts.txt", "--data.val_size", "2", "--data.batch_size", "2"),
        *("--model.num_inference_steps", "4", "--model.stop_steps", "2"),
        *("--trainer.max_steps", str(STEPS), "--trainer.val_check_interval", "5"),
        *("--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.name", name),
        *("--trainer.callbacks.init_args.every_n_train_steps", "1"),
        *extra,
    ]
    log = tmp / f"{name}-{len(list(tmp.glob(f'{name}-*.log')))}.log"
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=tmp,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    process.log = log
    return process


def _finish(process: subprocess.Popen) -> str:
    process.wait(timeout=300)
    assert process.returncode == 0, process.log.read_text()[-3000:]
    return process.log.read_text()


def _exported_steps(tmp: Path, name: str) -> dict[Path, int]:
    """Every step-stamped embedding of run `name` (exported just before the checkpoint of that step)."""
    files = (tmp / "runs" / name).glob("version_*/checkpoints/negative-step*.safetensors")
    return {path: int(path.stem.removeprefix("negative-step")) for path in files}


def _wait_for_step(tmp: Path, name: str, step: int, process: subprocess.Popen, before: set[Path]) -> bool:
    """Until this attempt (files not in `before`) has exported a step >= `step`: True. False when it ended
    cleanly with nothing left to train: the attempt before it ran to the end before its kill landed."""
    deadline = time.monotonic() + 240
    while True:
        ended = process.poll() is not None
        exported = _exported_steps(tmp, name)
        if any(s >= step for p, s in exported.items() if p not in before):
            return True
        if ended and process.returncode == 0 and max(exported.values(), default=0) == STEPS:
            return False
        if ended:
            pytest.fail(f"training ended before step {step}: {process.log.read_text()[-3000:]}")
        assert time.monotonic() < deadline, f"no step {step} after 240 s"
        time.sleep(0.02)


def _final_embedding(tmp: Path, name: str) -> torch.Tensor:
    """The newest export (a resumed run that was already finished has nothing left to train or export)."""
    exports = (tmp / "runs" / name).glob("version_*/negative.safetensors")
    latest = max(exports, key=lambda p: int(p.parent.name.split("_")[1]))
    return load_file(latest)["negative_prompt_embeds"]


@pytest.mark.slow
def test_killed_and_resumed_run_equals_uninterrupted_run_bitwise(tmp_path):
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    reference = _train(tmp_path, "reference")  # runs alongside the killed attempts

    seed = int(os.environ.get("RENEGX_RESUME_SEED", random.randrange(2**32)))  # the seed replays a failure
    rng = random.Random(seed)
    kill_steps = sorted(rng.sample(range(1, STEPS), KILLS))
    print(f"random seed {seed}, kills after steps {kill_steps}")  # shown when the test fails
    resumed_from = []
    for step in kill_steps:
        before = set(_exported_steps(tmp_path, "killed"))
        attempt = _train(tmp_path, "killed", "--ckpt_path", "last")
        if _wait_for_step(tmp_path, "killed", step, attempt, before):
            time.sleep(rng.uniform(0, 0.3))  # anywhere: mid-step, mid-checkpoint-write, mid-validation
            attempt.send_signal(signal.SIGKILL)
        attempt.wait()
        resumed_from.append(attempt.log.read_text())
    last = _finish(_train(tmp_path, "killed", "--ckpt_path", "last"))
    _finish(reference)

    context = f"random seed {seed}, kills after steps {kill_steps}"
    assert sum("renegx: resuming from" in err for err in [*resumed_from[1:], last]) >= KILLS - 1, context
    expected, got = _final_embedding(tmp_path, "reference"), _final_embedding(tmp_path, "killed")
    assert torch.equal(got, expected), context
    checkpoint = max(
        (tmp_path / "runs" / "killed").glob("version_*/checkpoints/last.ckpt"), key=os.path.getmtime
    )
    state = torch.load(checkpoint, weights_only=True)
    reference_state = torch.load(
        tmp_path / "runs" / "reference" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True
    )
    assert state["global_step"] == STEPS
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(
            state["optimizer_states"][0]["state"][0][key],
            reference_state["optimizer_states"][0]["state"][0][key],
        )
    assert torch.equal(state["renegx"]["noise_rng"], reference_state["renegx"]["noise_rng"])


@pytest.mark.slow
def test_tiny_sd3_run_killed_and_resumed_equals_uninterrupted_run_bitwise(tmp_path):
    """The same on SD3's flow schedule and packed negative: four steps, one kill after the second."""
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    sd3 = ("--model.model", "tiny-sd3", "--model.guidance_scale", "4.5", "--trainer.max_steps", "4")
    reference = _train(tmp_path, "reference", *sd3)
    attempt = _train(tmp_path, "killed", *sd3, "--ckpt_path", "last")
    if _wait_for_step(tmp_path, "killed", 2, attempt, set()):
        attempt.send_signal(signal.SIGKILL)
    attempt.wait()
    last = _finish(_train(tmp_path, "killed", *sd3, "--ckpt_path", "last"))
    _finish(reference)
    assert "renegx: resuming from" in last
    assert torch.equal(_final_embedding(tmp_path, "killed"), _final_embedding(tmp_path, "reference"))


def test_sampler_order_is_a_function_of_seed_and_epoch_and_resumes_mid_epoch():
    dataset = list(range(11))
    sampler = ResumableShuffleSampler(dataset, seed=4)
    epochs = [list(sampler) for _ in range(3)]  # each pass is the next epoch
    assert all(sorted(order) == dataset for order in epochs) and epochs[0] != epochs[1]
    sampler.set_epoch(0)  # Lightning's counter is ignored
    assert list(sampler) not in epochs

    resumed = ResumableShuffleSampler(dataset, seed=4)
    resumed.resume(1, 6)
    assert list(resumed) == epochs[1][6:] and len(resumed) == 11  # the length stays the whole epoch
    assert list(resumed) == epochs[2]  # only the resumed epoch is shortened


def test_data_position_round_trips_through_a_checkpoint(tmp_path):
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS) + "\n")
    datamodule = PromptDataModule(str(tmp_path / "p.txt"), val_size=2, batch_size=2)
    datamodule.setup()
    full = [b["indices"].tolist() for b in datamodule.train_dataloader()]
    datamodule.load_state_dict({"epoch": 0, "batches": 2, "batch_size": 2, "world_size": 1})
    assert [b["indices"].tolist() for b in datamodule.train_dataloader()] == full[2:]
    datamodule.load_state_dict({"epoch": 0, "batches": len(full), "batch_size": 2, "world_size": 1})
    sampler = datamodule.train_dataloader().sampler
    assert (sampler.next_epoch, sampler.skip) == (1, 0)  # saved at an epoch's last batch: the next epoch
