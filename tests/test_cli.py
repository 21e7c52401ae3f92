"""The jobs as a user runs them: train.py → exported file → infer.py, and their one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import renegx
from renegx.cli import infer_main, train_main
from renegx.configs import path_of
from renegx.negatives.embedding import NegativeEmbedding

ROOT = Path(__file__).resolve().parents[1]
TINY = str(path_of("train/tiny"))


def _train_tiny(save_dir, *overrides, max_steps=1) -> int:
    args = ["fit", "--config", TINY, "--trainer.max_steps", str(max_steps)]
    return train_main([*args, "--trainer.logger.init_args.save_dir", str(save_dir), *overrides])


def _run(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_train_export_infer_chain(tmp_path):
    runs = tmp_path / "runs"
    train = _run(
        str(ROOT / "train.py"),
        "fit",
        "--config",
        TINY,
        "--trainer.max_steps",
        "3",
        "--trainer.logger.init_args.save_dir",
        str(runs),
        cwd=tmp_path,
    )
    assert train.returncode == 0, train.stderr[-2000:]
    exported = runs / "tiny" / "version_0" / "negative.safetensors"
    embedding = NegativeEmbedding.load(exported, hidden_size=32)
    assert embedding.metadata["train_steps"] == "3" and embedding.metadata["base_model"] == "tiny"
    assert (exported.parent / "README.md").read_text().count("negative.safetensors") >= 1
    assert (exported.parent / "config.yaml").exists()  # resolved config saved beside the run
    assert (exported.parent / "checkpoints" / "last.ckpt").exists()

    out = tmp_path / "images"
    infer = _run(
        str(ROOT / "infer.py"),
        "--model",
        "tiny",
        "--negative",
        str(exported),
        "--prompt",
        "a cat",
        "--steps",
        "3",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert infer.returncode == 0, infer.stderr[-2000:]
    sidecar = json.loads((out / "0000_seed0.json").read_text())
    assert (out / "0000_seed0.png").stat().st_size > 0
    assert (
        sidecar["prompt"] == "a cat" and sidecar["seed"] == 0 and sidecar["negative"]["kind"] == "embedding"
    )
    assert sidecar["negative"]["metadata"]["train_steps"] == "3"
    assert sidecar["num_inference_steps"] == 3 and sidecar["seconds"] > 0


def test_checkpoint_holds_the_embedding_not_the_frozen_models(tmp_path):
    assert _train_tiny(tmp_path, max_steps=2) == 0
    ckpt = torch.load(tmp_path / "tiny" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert list(ckpt["state_dict"]) == ["negative_embeds"]
    assert ckpt["global_step"] == 2 and ckpt["optimizer_states"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("renegx: error: ")
    return err[-1]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--model.guidance_scale", "1.0"], "guidance_scale must be > 1"),
        (["--model.stop_steps", "11"], "stop_steps must be in [1, num_inference_steps=10]"),
        (["--model.model", "/nonexistent/sd15"], "model folder not found: /nonexistent/sd15"),
        (["--data.prompts", "/nonexistent/prompts.txt"], "/nonexistent/prompts.txt"),
    ],
)
def test_training_bad_input_is_one_line(overrides, message, tmp_path, capsys):
    assert _train_tiny(tmp_path, *overrides) == 2
    assert message in _one_line_error(capsys)


def test_training_empty_prompt_file_is_one_line(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert _train_tiny(tmp_path, "--data.prompts", str(empty)) == 2
    assert "has no prompts" in _one_line_error(capsys)


@pytest.fixture
def wide_embedding(tmp_path):
    path = tmp_path / "wide.safetensors"
    NegativeEmbedding(torch.zeros(1, 77, 768)).save(path)
    return path


def test_infer_bad_inputs_are_one_line(tmp_path, wide_embedding, capsys):
    out = str(tmp_path / "out")
    cases = [
        (["--prompt", "a cat", "--negative", str(wide_embedding)], "768"),
        (["--prompts", str(tmp_path / "missing.txt")], "missing.txt"),
        (["--prompt", "a cat", "--model", "/nonexistent/model"], "model folder not found"),
        (["--prompt", "a cat", "--negative", str(tmp_path / "nope.safetensors")], "not found"),
        (["--prompt", "a cat", "--seeds", "1,x"], "--seeds must be comma-separated integers"),
        ([], "no prompts"),
    ]
    for args, message in cases:
        assert infer_main([*args, "--out", out, "--steps", "2"]) == 2, args
        assert message in _one_line_error(capsys), args
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert infer_main(["--prompt", "a cat", "--out", str(blocker / "sub")]) == 2
    assert "not writable" in _one_line_error(capsys)


def test_infer_baselines_differ_and_are_deterministic(tmp_path):
    def image_bytes(negative, name):
        out = tmp_path / name
        assert (
            infer_main(["--prompt", "a cat", "--negative", negative, "--steps", "3", "--out", str(out)]) == 0
        )
        return (out / "0000_seed0.png").read_bytes(), json.loads((out / "0000_seed0.json").read_text())

    none, none_meta = image_bytes("none", "none")
    null, _ = image_bytes("null", "null")
    null_again, _ = image_bytes("null", "null2")
    text, text_meta = image_bytes("text:blurry, ugly", "text")
    assert null == null_again
    assert len({none, null, text}) == 3
    assert none_meta["guidance_scale"] == 1.0 and text_meta["negative"]["kind"] == "text"


def test_usage_errors_are_one_line_naming_the_value_the_choices_and_the_nearest(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert infer_main(["--prompt", "a cat", "--sampler", "vml", "--out", out]) == 2
    line = _one_line_error(capsys)
    assert "'vml'" in line and "'cfg', 'dnp', 'answer', 'vlm', 'npc'" in line and "did you mean vlm?" in line
    assert infer_main(["--prompt", "a cat", "--sampelr", "vlm", "--out", out]) == 2
    assert "--sampelr" in (line := _one_line_error(capsys)) and "did you mean --sampler?" in line
    assert train_main(["per-prompt", "--config", TINY]) == 2
    assert "required: embedding, prompts, out" in _one_line_error(capsys)
    assert _train_tiny(tmp_path, "--trainer.max_step", "2") == 2
    assert "did you mean --trainer.max_steps?" in _one_line_error(capsys)
    assert _train_tiny(tmp_path, "--data.prompts", "toyworld-tran") == 2
    assert "did you mean toyworld-train?" in _one_line_error(capsys)
    for captured in (capsys.readouterr().err,):
        assert "usage:" not in captured


def test_failed_fit_leaves_no_run_folder(tmp_path, capsys):
    assert _train_tiny(tmp_path, "--data.prompts", "no-such-set") == 2
    assert "no-such-set" in _one_line_error(capsys)
    assert not (tmp_path / "tiny").exists()  # the next run is version_0 again


def test_train_help_lists_per_prompt(capsys):
    with pytest.raises(SystemExit) as exit_:
        train_main(["--help"])
    assert exit_.value.code == 0
    assert "per-prompt" in capsys.readouterr().out


def test_summary_printed_at_fit_end_is_the_last_output(tmp_path, capsys):
    from lightning.pytorch import Callback

    from renegx.cli.fit import RenegxCLI
    from renegx.train.progress import StepProgressBar

    class Summary(Callback):
        def on_fit_end(self, trainer, pl_module):
            print("the summary")

    args = ["--config", TINY, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0"]
    cli = RenegxCLI(args=[*args, "--trainer.logger.init_args.save_dir", str(tmp_path)], run=False)
    cli.trainer.callbacks.append(Summary())
    assert isinstance(cli.trainer.progress_bar_callback, StepProgressBar)
    cli.trainer.fit(cli.model, cli.datamodule)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines[-1] == "the summary"
    assert "training 100%" in out and "| 1/1 [" in out and "Epoch" not in out


def test_toy_model_card_snippet_runs(tmp_path, monkeypatch):
    from renegx.rewards import ToyPreference
    from renegx.train.callbacks import export_embedding
    from renegx.train.module import ReNegModule

    module = ReNegModule(reward=ToyPreference(), model="toy", num_inference_steps=2, stop_steps=1)
    export_embedding(module, tmp_path)
    card = (tmp_path / "README.md").read_text()
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    assert "from_pretrained(generator_folder())" in snippet
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(snippet, namespace)  # the card as a user copies it
    assert len(namespace["images"]) == 1 and namespace["images"][0].size == (32, 32)


def test_infer_model_defaults_to_the_files_base_model(tmp_path, capsys):
    toy_file = tmp_path / "toy.safetensors"
    NegativeEmbedding(torch.zeros(1, 77, 64), metadata={"base_model": "toy"}).save(toy_file)
    out = tmp_path / "out"
    assert (
        infer_main(["--model", "tiny", "--negative", str(toy_file), "--prompt", "a cat", "--out", str(out)])
        == 2
    )
    line = _one_line_error(capsys)
    assert "'toy'" in line and "'tiny'" in line and "pass --model toy" in line
    assert (
        infer_main(["--negative", str(toy_file), "--prompt", "a cat", "--steps", "1", "--out", str(out)]) == 0
    )
    assert json.loads((out / "0000_seed0.json").read_text())["model"] == "toy"


def test_infer_model_defaults_to_a_textual_inversion_files_base_model(tmp_path):
    shipped = Path(renegx.__file__).parent / "toyworld" / "weights" / "negatives" / "ti_defects.safetensors"
    out = tmp_path / "out"
    argv = ["--negative", f"ti:{shipped}", "--prompt", "a red circle", "--steps", "1", "--out", str(out)]
    assert infer_main(argv) == 0
    assert json.loads((out / "0000_seed0.json").read_text())["model"] == "toy"


def test_renegx_command_lists_every_job(capsys):
    from renegx.cli import main

    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(f"  {job} " in text for job in ("fit", "per-prompt", "infer", "evaluate"))
    assert main(["infr"]) == 2
    assert _one_line_error(capsys).endswith("(did you mean infer?)")


@pytest.mark.parametrize("job", ["infer", "evaluate", "per-prompt"])
def test_every_job_prints_its_resolved_config(job, tmp_path, capsys):
    """`--print_config` everywhere, and what it prints is a `--config` the job reads back."""
    from renegx.cli import main

    required = {
        "infer": ["--prompt", "a cat", "--out", "o"],
        "evaluate": ["--model", "tiny", "--negatives", "null", "--benchmark", "parti", "--out", "o"],
        "per-prompt": [
            *(
                "--config",
                TINY,
                "--embedding",
                "e.safetensors",
                "--prompts",
                "p.txt",
                "--out",
                "b.safetensors",
            )
        ],
    }[job]
    with pytest.raises(SystemExit):
        main([job, *required, "--seeds" if job != "per-prompt" else "--eval-seeds", "3,4", "--print_config"])
    printed = capsys.readouterr().out
    config = tmp_path / "printed.yaml"
    config.write_text(printed)
    with pytest.raises(SystemExit):
        main([job, "--config", str(config), "--print_config"])
    assert capsys.readouterr().out == printed and "3,4" in printed


def test_seeds_device_and_negatives_are_one_option_group():
    from renegx.cli.infer import infer_parser
    from renegx.cli.per_prompt import per_prompt_parser
    from renegx.evaluate.settings import evaluate_parser

    infer, evaluate, per_prompt = infer_parser(), evaluate_parser(), per_prompt_parser()
    for flag in ("--device", "--dtype", "--bank-fallback", "--steps", "--sampler-opt", "--model"):
        assert infer._option_string_actions[flag].help == evaluate._option_string_actions[flag].help, flag
    assert per_prompt._option_string_actions["--device"].help == infer._option_string_actions["--device"].help
    assert infer._option_string_actions["--seeds"].type == evaluate._option_string_actions["--seeds"].type


def test_renegx_help_imports_neither_torch_nor_lightning():
    """`renegx --help` answers in a fraction of a second: the jobs' modules load only when a job runs."""
    code = (
        "import sys; from renegx.cli import main; main(['--help']); "
        "print(sorted({'torch', 'lightning'} & set(sys.modules)))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.splitlines()[-1] == "[]"
