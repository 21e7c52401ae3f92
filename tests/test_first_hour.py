"""What a new user meets first: the defaults a negative file supplies, fast one-line failures, outputs that
are neither overwritten nor mixed, and the messages of the commands."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from renegx.cli import main
from renegx.negatives.embedding import NegativeEmbedding

TOY_RECIPE = {
    "base_model": "toy",
    "reward": "toy-pref",
    "guidance_scale": "6.0",
    "num_inference_steps": "20",
    "stop_steps": "7",
    "negative_from": "0.5",
}
TINY_RECIPE = {
    "base_model": "tiny",
    "reward": "clip",
    "guidance_scale": "5.0",
    "num_inference_steps": "3",
    "stop_steps": "2",
}


def _file(path, width: int, metadata: dict) -> str:
    NegativeEmbedding(torch.zeros(1, 77, width), metadata=metadata).save(path)
    return str(path)


def _printed_config(capsys, argv: list[str]) -> dict:
    with pytest.raises(SystemExit):
        main([*argv, "--print_config"])
    return yaml.safe_load(capsys.readouterr().out)


# -- 2. a negative file supplies what it knows --------------------------------------------------------
@pytest.mark.parametrize(
    ("recipe", "width", "reward"),
    [(TINY_RECIPE, 32, "renegx.rewards.ClipScore"), (TOY_RECIPE, 64, "renegx.rewards.ToyPreference")],
)
def test_per_prompt_without_a_config_tunes_as_the_file_was_trained(tmp_path, capsys, recipe, width, reward):
    embedding = _file(tmp_path / "g.safetensors", width, recipe)
    argv = ["per-prompt", "--embedding", embedding, "--prompts", "p.txt", "--out", "b.safetensors"]
    model = _printed_config(capsys, argv)["model"]
    assert model["model"] == recipe["base_model"] and model["reward"]["class_path"] == reward
    assert model["guidance_scale"] == float(recipe["guidance_scale"])
    assert model["num_inference_steps"] == int(recipe["num_inference_steps"])
    assert model["stop_steps"] == int(recipe["stop_steps"])
    assert model["negative_from"] == float(recipe.get("negative_from", 0))
    if recipe is TINY_RECIPE:  # the shipped config of its model and reward: the tiny CLIP, not the hub's
        assert model["reward"]["init_args"]["model"] == "tiny"
    # a flag still wins over what the file records
    overridden = _printed_config(capsys, [*argv, "--model.guidance_scale", "3"])["model"]
    assert overridden["guidance_scale"] == 3.0


def test_per_prompt_help_shows_the_default_configs_values(capsys):
    with pytest.raises(SystemExit):
        main(["per-prompt", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "renegx.rewards.ToyPreference" in text and "--model.lr LR (type: float, default: 0.04)" in text


def test_infer_draws_with_the_steps_and_scale_the_file_records(tmp_path, capsys):
    embedding = _file(tmp_path / "n.safetensors", 32, TINY_RECIPE)
    out = tmp_path / "out"
    assert main(["infer", "--negative", embedding, "--prompt", "a cat", "--out", str(out)]) == 0
    record = json.loads(next(out.glob("*.json")).read_text())
    assert record["num_inference_steps"] == 3 and record["guidance_scale"] == 5.0
    assert (
        main(
            [
                "infer",
                "--negative",
                "null",
                "--prompt",
                "a cat",
                "--steps",
                "1",
                "--out",
                str(tmp_path / "null"),
            ]
        )
        == 0
    )
    assert "random weights" in capsys.readouterr().err  # no --model and no file naming one


def test_evaluate_takes_steps_and_scale_from_the_negative_files(tmp_path):
    from renegx.evaluate.settings import parse_evaluate_args, settings_from_args

    embedding = _file(tmp_path / "n.safetensors", 32, TINY_RECIPE)
    argv = ["--model", "tiny", "--benchmark", "p.txt", "--out", "o", "--negatives", f"null,{embedding}"]
    settings = settings_from_args(parse_evaluate_args(argv))
    assert (settings.steps, settings.guidance_scale) == (3, 5.0)
    settings = settings_from_args(parse_evaluate_args([*argv, "--steps", "4"]))
    assert (settings.steps, settings.guidance_scale) == (4, 5.0)
    settings = settings_from_args(parse_evaluate_args([*argv[:-1], "null"]))
    assert (settings.steps, settings.guidance_scale) == (30, 7.5)


def test_evaluate_judges_the_toy_world_with_its_own_judges():
    from renegx.evaluate.judges import natural_judges

    assert natural_judges("prompts.txt", "toy") == ["toy-pref", "toy-independent"]
    assert natural_judges("prompts.txt", "/models/sd15") == ["pickscore", "hpsv2.1", "imagereward"]
    assert natural_judges("parti", "toy") == ["pickscore", "hpsv2.1", "clip"]


# -- 7. offline by default where it matters ---------------------------------------------------------------
def test_a_misspelt_model_name_fails_at_once_with_the_nearest_name(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["infer", "--model", "toyy", "--prompt", "a cat", "--out", str(out)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("renegx: error: unknown model 'toyy' (did you mean toy?)")


def test_weights_without_network_is_one_line_and_leaves_no_folder(tmp_path, monkeypatch, capsys):
    from huggingface_hub.errors import LocalEntryNotFoundError

    import renegx.cli.weights as weights

    def no_network(need, root):
        need.folder(root).mkdir(parents=True)
        raise LocalEntryNotFoundError("Got: ConnectError: [Errno -2] Name or service not known\nmore")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(weights, "fetch", no_network)
    out = tmp_path / "weights"
    assert weights.main(["--config", "train/sd15_clip", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("renegx: error: cannot fetch stable-diffusion-v1-5/stable-diffusion-v1-5: Got:")
    assert not out.exists()


# -- 8. fail fast; 4. outputs neither overwritten nor mixed; 11. messages ------------------------------------
def _last_error(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_infer_checks_the_negative_file_before_loading_a_model(tmp_path, monkeypatch, capsys):
    import renegx.cli.infer as infer

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the negative file was checked")

    monkeypatch.setattr(infer, "family_of", no_model)
    out = tmp_path / "out"
    argv = ["infer", "--prompt", "a cat", "--out", str(out), "--negative"]
    assert main([*argv, str(tmp_path / "missing.safetensors")]) == 2
    assert _last_error(capsys).endswith("embedding file not found: " + str(tmp_path / "missing.safetensors"))
    assert not out.exists()  # a failed run leaves no empty folder
    run = tmp_path / "run"
    run.mkdir()
    embedding = _file(run / "negative.safetensors", 32, TINY_RECIPE)
    assert main([*argv, str(run)]) == 2
    assert _last_error(capsys).endswith(f"is a folder, not a negative file (did you mean {embedding}?)")
    assert main([*argv, f"ti:{embedding}"]) == 2
    assert "is a renegx negative embedding, not a textual inversion: drop 'ti:'" in _last_error(capsys)


def test_infer_names_images_by_prompt_and_seed_and_numbers_a_second_run_on(tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "infer",
        "--model",
        "tiny",
        "--prompt",
        "a cat",
        "--prompt",
        "a dog",
        "--steps",
        "1",
        "--out",
        str(out),
    ]
    assert main([*argv, "--seeds", "0,42"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"wrote 4 images to {out}")
    names = sorted(path.name for path in out.glob("*.png"))
    assert names == ["0000_seed0.png", "0000_seed42.png", "0001_seed0.png", "0001_seed42.png"]
    record = json.loads((out / "0001_seed42.json").read_text())
    assert (record["prompt"], record["seed"]) == ("a dog", 42)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    assert main([*argv, "--seeds", "42,7"]) == 0  # 0000_seed42.png is there: this run's names number on
    assert (
        capsys.readouterr()
        .out.strip()
        .endswith(f"wrote 4 images to {out} (named *_run2.png: {out} holds images of an earlier run)")
    )
    assert all((out / name).read_bytes() == data for name, data in before.items())
    assert json.loads((out / "0001_seed7_run2.json").read_text())["seed"] == 7
    assert (out / "0000_seed42_run2.png").is_file() and len(list(out.glob("*.png"))) == 8
    assert main([*argv, "--seeds", "3"]) == 0  # nothing clashes: plain names again
    assert (out / "0001_seed3.png").is_file()


def test_failed_infer_removes_the_folders_it_created(tmp_path, capsys):
    wide = NegativeEmbedding(torch.zeros(1, 77, 768)).save(tmp_path / "wide.safetensors")
    out = tmp_path / "new" / "nested" / "out"
    argv = ["infer", "--model", "tiny", "--prompt", "a cat", "--steps", "1", "--out", str(out), "--negative"]
    assert main([*argv, str(wide)]) == 2  # fails once the model is loaded, inside the folder
    assert "768" in _last_error(capsys)
    assert not (tmp_path / "new").exists()
    (tmp_path / "new").mkdir()
    assert main([*argv, str(wide)]) == 2
    assert (tmp_path / "new").is_dir() and not (tmp_path / "new" / "nested").exists()  # only what it made


# -- 3. a failed evaluate leaves its folder usable -------------------------------------------------
def _evaluation(tmp_path, *extra: str):
    from renegx.evaluate.settings import parse_evaluate_args, settings_from_args

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    argv = ["--model", "tiny", "--benchmark", str(prompts), "--out", str(tmp_path / "eval")]
    argv += ["--steps", "1", "--guidance-scale", "7.5"]
    return settings_from_args(parse_evaluate_args([*argv, *extra]))


def test_evaluate_checks_negatives_and_judges_before_writing_or_drawing(tmp_path):
    from renegx.errors import RenegxError
    from renegx.evaluate.run import run_evaluation

    missing = _evaluation(tmp_path, "--negatives", f"null,{tmp_path / 'bad' / 'negative.safetensors'}")
    with pytest.raises(RenegxError, match="embedding file not found"):
        run_evaluation(missing)
    assert not (tmp_path / "eval").exists()
    broken_judge = _evaluation(
        tmp_path, "--negatives", "null", "--judges", "clip", "--judge-opt", "model=/nonexistent/clip"
    )
    with pytest.raises(RenegxError, match="/nonexistent/clip"):
        run_evaluation(broken_judge)
    assert not list((tmp_path / "eval").glob("seed*"))  # not one image drawn


def test_evaluate_reruns_with_a_fixed_path_when_no_image_of_the_old_one_exists(tmp_path):
    from renegx.evaluate.benchmarks import load_benchmark
    from renegx.evaluate.generation import check_and_record
    from renegx.evaluate.layout import Layout
    from renegx.evaluate.settings import SettingsError

    run = tmp_path / "runs" / "negative.safetensors"
    run.parent.mkdir()
    _file(run, 32, TINY_RECIPE)
    bad = _evaluation(tmp_path, "--negatives", f"null,{tmp_path / 'bad' / 'negative.safetensors'}")
    fixed = _evaluation(tmp_path, "--negatives", f"null,{run}")
    layout = Layout(tmp_path / "eval")
    benchmark = load_benchmark(bad.benchmark)
    check_and_record(bad, benchmark, layout)  # a folder an earlier failure left with the wrong path
    check_and_record(fixed, benchmark, layout)  # no image of it exists: the fixed path is taken
    sidecar = layout.image(0, "negative", "prompts", 0).with_suffix(".json")
    sidecar.parent.mkdir(parents=True)
    sidecar.write_text("{}")
    with pytest.raises(SettingsError, match="holds images of negative"):
        check_and_record(bad, benchmark, layout)


# -- 5. Ctrl-C ------------------------------------------------------------------------------------------
def test_ctrl_c_is_one_line_saying_what_was_kept(capsys):
    from renegx.cli.terminal import INTERRUPTED, RERUN, run_reporting_errors

    def job():
        raise KeyboardInterrupt

    assert run_reporting_errors(job, on_interrupt=RERUN) == INTERRUPTED
    assert capsys.readouterr().err.splitlines() == [f"renegx: interrupted: {RERUN}"]


@pytest.mark.slow
def test_ctrl_c_in_fit_names_the_checkpoint_and_the_resume(tmp_path, monkeypatch, capsys):
    import warnings

    from renegx.cli import train_main
    from renegx.configs import path_of
    from renegx.train.module import ReNegModule

    step = ReNegModule.training_step

    def interrupted_at_step_2(self, *args, **kwargs):
        if self.global_step == 2:
            raise KeyboardInterrupt
        return step(self, *args, **kwargs)

    monkeypatch.setattr(ReNegModule, "training_step", interrupted_at_step_2)
    argv = ["fit", "--config", str(path_of("train/tiny")), "--trainer.max_steps", "4"]
    argv += ["--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.limit_val_batches", "0"]
    argv += ["--trainer.callbacks.init_args.every_n_train_steps", "1"]
    assert train_main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    checkpoint = tmp_path / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    assert err[-1] == (
        f"renegx: interrupted: the newest checkpoint is {checkpoint}: run the same command with "
        "--ckpt_path last to resume"
    )
    assert not any("KeyboardInterrupt" in line or "Traceback" in line for line in err)
    monkeypatch.setattr(ReNegModule, "training_step", step)
    with warnings.catch_warnings(record=True) as caught:
        assert train_main([*argv, "--ckpt_path", "last"]) == 0
    notices = [str(w.message) for w in caught]
    assert not [n for n in notices if "not resumable" in n or "dirpath has changed" in n], notices


# -- 11. messages ----------------------------------------------------------------------------------------
def test_renegx_warnings_are_one_line_without_a_source_line():
    import warnings
    from pathlib import Path

    import renegx
    from renegx.cli.terminal import quiet_third_party

    quiet_third_party()
    inside = str(Path(renegx.__file__).parent / "negatives" / "spec.py")
    text = warnings.formatwarning("bank b holds none of the 2 prompt(s)", UserWarning, inside, 70)
    assert text == "renegx: warning: bank b holds none of the 2 prompt(s)\n"
    assert "third.py:3" in warnings.formatwarning("x", UserWarning, "/elsewhere/third.py", 3)


def test_evaluate_help_lists_the_judges_and_reads_cleanly(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "95%%" not in text and "95% intervals" in text
    assert "(default: the first) (default: null)" not in text
    assert "hpsv3, imagereward, pickscore, toy- independent, toy-pref" in text


def test_a_prompt_file_that_is_not_utf8_names_the_line(tmp_path):
    from renegx.prompts import PromptFileError, read_prompts

    path = tmp_path / "prompts.txt"
    path.write_bytes("a red circle\na blue square\ncaf\xe9 scene\n".encode("latin-1"))
    with pytest.raises(PromptFileError, match=r"line 3 has byte 0xe9 \(save it as UTF-8\)"):
        read_prompts(path)


# -- 12. files and cards ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_exported_files_are_readable_like_the_rest_and_the_card_runs_from_anywhere(tmp_path, monkeypatch):
    import os

    from renegx.rewards import ToyPreference
    from renegx.train.callbacks import export_embedding
    from renegx.train.module import ReNegModule

    module = ReNegModule(reward=ToyPreference(), model="toy", num_inference_steps=2, stop_steps=1)
    path = export_embedding(module, tmp_path / "run")
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not 0600: the group reads it as the card
    card = (tmp_path / "run" / "README.md").read_text()
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'prompts = ["a red circle"]' in snippet  # a prompt of its world
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    namespace: dict = {}
    exec(snippet, namespace)
    assert len(namespace["images"]) == 1


def test_the_held_out_grid_labels_name_the_seeds_of_the_summary():
    from renegx.evaluate.held_out import grid_columns, held_out_pairs

    prompts, seeds = ["a red circle", "a blue square"], [100000, 100001]
    columns = grid_columns(prompts, seeds)
    assert [prompt for prompt, _ in columns] == [prompt for prompt, _, _ in held_out_pairs(prompts, seeds)]
    assert [seed for _, seed in columns] == seeds * len(prompts)


# -- 6. threads ------------------------------------------------------------------------------------------
def test_the_default_thread_count_is_half_the_cores(monkeypatch):
    import os

    from renegx.cli.terminal import default_threads, set_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(2)), raising=False)
    assert default_threads() == 1  # two shared cores: one thread, not torch's two
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(16)), raising=False)
    assert default_threads() == 8
    threads = torch.get_num_threads()
    try:
        assert set_threads(3) == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_every_job_refuses_zero_threads_before_it_loads_anything(capsys):
    for job in (
        ["infer", "--prompt", "a"],
        ["evaluate", "--model", "tiny", "--negatives", "null", "--benchmark", "p.txt"],
        ["fit"],
    ):
        assert main([*job, "--out" if job[0] != "fit" else "--seed_everything", "0", "--threads", "0"]) == 2
        assert _last_error(capsys) == "renegx: error: --threads must be >= 1, got 0"
    argv = ["per-prompt", "--embedding", "e.safetensors", "--prompts", "p.txt", "--out", "b.safetensors"]
    assert _printed_config(capsys, [*argv, "--threads", "2"])["threads"] == 2


# -- 10. one protocol for one question ---------------------------------------------------------------------
def test_a_bank_read_as_one_embedding_is_refused_with_the_way_to_read_it(tmp_path):
    from renegx.negatives.bank import EmbeddingBank
    from renegx.negatives.format import EmbeddingError

    rows = NegativeEmbedding(torch.randn(2, 77, 32))
    EmbeddingBank(rows, ["a red circle", "a blue square"]).save(tmp_path / "bank.safetensors")
    with pytest.raises(EmbeddingError, match=r"bank.safetensors is .*bank of 2 prompts.*EmbeddingBank\.load"):
        NegativeEmbedding.load(tmp_path / "bank.safetensors")  # refused on reading, before any pipeline
    bank = EmbeddingBank.load(tmp_path / "bank.safetensors")
    assert "prompts" not in bank.select(["a blue square"]).metadata  # the bank's own rows still draw


# -- 9. sampler configs that run where they are documented ------------------------------------------------
@pytest.mark.parametrize("name", ["dnp", "npc", "vlm"])
def test_shipped_sampler_configs_use_the_toy_worlds_own_models_on_it(name):
    from renegx.configs import path_of
    from renegx.models import family_of
    from renegx.samplers.config import load_sampler_config
    from renegx.samplers.external import _auto

    _, options = load_sampler_config(str(path_of(f"samplers/{name}")))
    specs = {key: options[key] for key in ("captioner", "verifier", "oracle") if key in options}
    assert specs and set(specs.values()) == {"auto"}, specs  # no hub model named for every world

    class Toy:
        spec = family_of("toy")

    assert _auto("captioner", Toy, "hub") == "toy" and _auto("oracle", Toy, "hub") == "toy"
    if name == "vlm":
        assert not any("pet" in question for question in options["questions"])


def test_a_2d_embedding_is_not_called_a_textual_inversion(tmp_path):
    from safetensors.torch import save_file

    from renegx.negatives.spec import _is_textual_inversion

    flat = tmp_path / "flat.safetensors"
    save_file({"negative_prompt_embeds": torch.zeros(77, 32)}, str(flat))
    assert not _is_textual_inversion(str(flat))
    token = tmp_path / "token.safetensors"
    save_file({"<bad>": torch.zeros(2, 32)}, str(token))
    assert _is_textual_inversion(str(token))


def test_a_prompt_longer_than_the_text_encoder_reads_is_one_warning_line(tmp_path, capfd):
    """Once per prompt, from renegx, in infer and evaluate; not the tokenizer's and pipeline's notices, which
    repeat per batch and quote padding as the dropped text."""
    long = "a dog on a long road that goes " + "on and " * 40 + "on"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"a cat\n{long}\n")
    common = ["--model", "tiny", "--steps", "2"]
    assert (
        main(["infer", *common, "--prompts", str(prompts), "--seeds", "0,1", "--out", str(tmp_path / "i")])
        == 0
    )
    bench = ["--benchmark", str(prompts), "--judges", "clip", "--judge-opt", "model=tiny", "--seeds", "0,1"]
    assert main(["evaluate", *common, "--negatives", "null", *bench, "--out", str(tmp_path / "e")]) == 0
    err = capfd.readouterr().err.replace("\r", "\n")
    warned = [line for line in err.splitlines() if "renegx: warning: prompt" in line]
    assert len(warned) == 2, err  # one per command, though each draws the prompt twice
    assert all(
        line.endswith("tokens; the text encoder reads the first 77 and drops the rest") for line in warned
    )
    assert "Token indices sequence length" not in err and "was truncated because CLIP" not in err


def test_the_answer_sampler_says_what_its_defaults_do_in_one_line(tmp_path, capfd):
    args = ["infer", "--model", "tiny", "--sampler", "answer", "--prompt", "a cat", "--steps", "2"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    err = capfd.readouterr().err.replace("\r", "\n")
    cautions = [
        line for line in err.splitlines() if line.startswith("renegx: warning: answer is a reconstruction")
    ]
    assert len(cautions) == 1 and cautions[0].endswith("compare it with --sampler cfg")
