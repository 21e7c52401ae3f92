"""Every training config runs as the command in its first line says: parsed and type-checked through
`train.py`'s entry point (which reads configs/train/base.yaml first), with the file's own values and the
base's in the result; configs that need no download also instantiate."""

import contextlib
import io
import shlex
from pathlib import Path

import pytest
import yaml

from renegx.cli import train_main
from renegx.cli.fit import RenegxCLI
from renegx.configs import FOLDER, path_of, resolve

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "renegx" / "configs" / "train"
BASE = TRAIN / "base.yaml"
CONFIGS = sorted(path for path in TRAIN.glob("*.yaml") if path != BASE)
OFFLINE = [TRAIN / name for name in ("tiny.yaml", "default.yaml", "toy_flow.yaml")]


def _first_line_command(config: Path) -> list[str]:
    """The `renegx` arguments of the config's first line; `# renegx fit (same as: <command>)` gives the
    spelt-out command."""
    first = config.read_text().splitlines()[0]
    assert first.startswith("# renegx fit"), first
    command = first.split("same as:", 1)[1].rstrip(")") if "same as:" in first else first[1:]
    words = shlex.split(command)
    assert words[0] == "renegx", first
    return words[1:]


def _scalars(node, path=()):
    """(key path, value) of every scalar under a YAML mapping; lists (callbacks) are left out."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _scalars(value, (*path, key))
    elif not isinstance(node, list):
        yield path, node


def _same(written, resolved) -> bool:
    if isinstance(written, str) and not isinstance(resolved, str):  # PyYAML reads 5e-3 as a string
        with contextlib.suppress(ValueError):
            return float(written) == resolved
    return written == resolved


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_parses_with_the_command_of_its_first_line(config, monkeypatch):
    args = _first_line_command(config)
    assert args[0] == "fit" and resolve(args[args.index("--config") + 1], "train") == config
    monkeypatch.chdir(ROOT)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit) as done:
        train_main([*args, "--print_config"])
    assert done.value.code in (0, None), printed.getvalue()
    resolved = yaml.safe_load(printed.getvalue())
    written = yaml.safe_load(config.read_text())
    base = [(path, value) for path, value in _scalars(yaml.safe_load(BASE.read_text()))]
    overridden = {path for path, _ in _scalars(written)}
    for path, value in [*_scalars(written), *((p, v) for p, v in base if p not in overridden)]:
        node = resolved
        for key in path:
            node = node[key]
        assert _same(value, node), f"{'.'.join(map(str, path))}: {value!r} in the file, {node!r} parsed"
    model = resolved["model"]
    assert model["reward"]["class_path"].startswith("renegx.rewards.")
    assert model["guidance_scale"] > 1
    assert 1 <= model["stop_steps"] <= model["num_inference_steps"]


@pytest.mark.parametrize("config", OFFLINE, ids=lambda p: p.name)
def test_offline_config_instantiates(config, tmp_path):
    cli = RenegxCLI(
        args=["--config", str(config), "--trainer.logger.init_args.save_dir", str(tmp_path)], run=False
    )
    assert cli.model.negative_embeds.requires_grad
    assert cli.trainer.max_steps > 0


def test_the_base_holds_the_shared_trainer_and_callbacks():
    """What the base gives is not written again in a config with the same value."""
    base = dict(_scalars(yaml.safe_load(BASE.read_text())))
    for config in CONFIGS:
        written = yaml.safe_load(config.read_text())
        repeated = [p for p, v in _scalars(written) if p in base and base[p] == v]
        assert not repeated, f"{config.name} repeats the base: {repeated}"
        assert written["trainer"].get("callbacks") != yaml.safe_load(BASE.read_text())["trainer"]["callbacks"]


def test_every_job_has_its_own_config_folder():
    folders = {p.name for p in FOLDER.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == {"train", "evaluate", "samplers"}


def test_a_config_saved_by_the_flat_layout_still_runs(tmp_path):
    """Run folders keep the `config.yaml` they were trained with; the old module paths it names resolve."""
    saved = yaml.safe_load(path_of("train/tiny").read_text())
    saved["trainer"]["callbacks"] = [
        {"class_path": "renegx.export.EmbeddingExporter"},
        {"class_path": "renegx.image_log.ImageLogger", "init_args": {"every_n_steps": 5}},
    ]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(saved))
    args = ["--config", str(config), "--trainer.logger.init_args.save_dir", str(tmp_path)]
    cli = RenegxCLI(args=args, run=False)
    names = {type(callback).__name__ for callback in cli.trainer.callbacks}
    assert {"EmbeddingExporter", "ImageLogger"} <= names
