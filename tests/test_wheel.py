"""An installed renegx runs its own configs: the wheel is built from this tree, installed without its
dependencies (offline, over this environment's packages) into a folder of its own, and its `renegx` command
runs the shipped configs from a folder that is not a checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL_TOY = [
    *("--trainer.max_steps", "2", "--model.num_inference_steps", "4", "--model.stop_steps", "1"),
    *("--trainer.callbacks.init_args.prompts", "[a red circle]"),
    *("--trainer.callbacks.init_args.seeds", "[0]"),
]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """The wheel, the folder it is installed in, and a folder to run commands from."""
    scratch = tmp_path_factory.mktemp("wheel")
    source = scratch / "source"
    skip = shutil.ignore_patterns(".git", ".venv*", "runs", "outputs", "build", "*.egg-info", "__pycache__")
    shutil.copytree(ROOT, source, ignore=skip)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    wheels = scratch / "dist"
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, source], check=True)
    (wheel,) = wheels.glob("renegx-*.whl")
    site = scratch / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", site, wheel], check=True)
    work = scratch / "work"
    work.mkdir()
    return {"wheel": wheel, "site": site, "work": work}


def _renegx(installed: dict, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(installed["site"]),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
    }
    command = [str(installed["site"] / "bin" / "renegx"), *args]
    work = installed["work"]
    return subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)


def test_the_wheel_ships_the_configs_and_the_toy_world(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    for config in ("train/base", "train/default", "train/tiny", "evaluate/toyworld", "samplers/vlm"):
        assert f"renegx/configs/{config}.yaml" in names, config
    assert "renegx/toyworld/weights/generator/unet/diffusion_pytorch_model.safetensors" in names


def test_the_installed_package_is_the_one_that_runs(installed):
    env = {**os.environ, "PYTHONPATH": str(installed["site"])}
    where = subprocess.run(
        [sys.executable, "-c", "import renegx.configs as c; print(c.FOLDER)"],
        cwd=installed["work"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(installed["site"])


def test_the_default_config_prints_without_a_checkout(installed):
    done = _renegx(installed, "fit", "--print_config")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "model: toy" in done.stdout and "class_path: renegx.rewards.ToyPreference" in done.stdout


def test_the_jobs_run_from_the_installed_configs(installed):
    default = _renegx(installed, "fit", *SMALL_TOY)
    assert default.returncode == 0, default.stderr[-2000:]
    exported = installed["work"] / "runs" / "default" / "version_0" / "negative.safetensors"
    assert exported.is_file()

    tiny = _renegx(installed, "fit", "--config", "train/tiny", "--trainer.max_steps", "2")
    assert tiny.returncode == 0, tiny.stderr[-2000:]
    assert (installed["work"] / "runs" / "tiny" / "version_0" / "negative.safetensors").is_file()

    infer = _renegx(
        installed,
        *("infer", "--negative", str(exported), "--prompt", "a red circle", "--steps", "2", "--out", "out"),
    )
    assert infer.returncode == 0, infer.stderr[-2000:]
    assert list((installed["work"] / "out").glob("*.png"))

    evaluate = _renegx(
        installed,
        *("evaluate", "--config", "evaluate/toyworld"),
        *("--steps", "2", "--limit", "1", "--seeds", "0", "--out", "eval"),
    )
    assert evaluate.returncode == 0, evaluate.stderr[-2000:]
    assert (installed["work"] / "eval" / "report.md").is_file()
