"""Settings of an evaluation: negatives, judges, benchmarks and the YAML/command-line merge."""

import json

import pytest
from assertions import assert_one_line_error

from renegx.cli.terminal import UsageError
from renegx.evaluate.benchmarks import HPS_STYLES, BenchmarkError, load_benchmark
from renegx.evaluate.judges import JudgeError, natural_judges, resolve_judge
from renegx.evaluate.run import judges_of
from renegx.evaluate.settings import (
    SettingsError,
    label_negatives,
    parse_evaluate_args,
    parse_judge_option,
    settings_from_args,
    split_negatives,
)

BASE = ["--model", "tiny", "--benchmark", "imagereward", "--out", "out"]


def settings(*argv):
    return settings_from_args(parse_evaluate_args([*BASE, *argv]))


def test_commas_inside_a_text_negative_are_kept():
    specs = split_negatives("null,text:blurry, ugly, low quality,a.safetensors,none,best=runs/b.bin")
    assert specs == ["null", "text:blurry, ugly, low quality", "a.safetensors", "none", "best=runs/b.bin"]


def test_negatives_get_folder_names():
    labelled = label_negatives(["null", "text:Blurry, ugly!", "runs/x/negative.safetensors", "best=b.bin"])
    assert labelled == {
        "null": "null",
        "text-blurry-ugly": "text:Blurry, ugly!",
        "negative": "runs/x/negative.safetensors",
        "best": "b.bin",
    }
    assert label_negatives({"mine": "a.safetensors"}) == {"mine": "a.safetensors"}


def test_two_negatives_with_one_folder_name_are_refused():
    assert_one_line_error(
        SettingsError,
        lambda: label_negatives(["a/negative.safetensors", "b/negative.safetensors"]),
        "would share the folder 'negative'",
        "--negative NAME=SPEC",
    )


def test_repeated_negative_option_keeps_commas():
    s = settings("--negative", "null", "--negative", "text:a, b, c")
    assert list(s.negatives.values()) == ["null", "text:a, b, c"]


def test_negative_adds_to_the_configured_negatives_and_negatives_replaces_them(tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text(
        "model: tiny\nbenchmark: parti\nout: o\nnegatives: [null, learned=runs/a.safetensors]\n"
    )

    def negatives(*argv):
        return settings_from_args(parse_evaluate_args(["--config", str(config), *argv])).negatives

    added = negatives("--negative", "easy=ti:easynegative.safetensors", "--negative", "text:blurry, ugly")
    assert added == {
        "null": "null",
        "learned": "runs/a.safetensors",
        "easy": "ti:easynegative.safetensors",
        "text-blurry-ugly": "text:blurry, ugly",
    }
    assert negatives("--negative", "learned=runs/a.safetensors") == {
        "null": "null",
        "learned": "runs/a.safetensors",
    }
    assert negatives("--negatives", "none,b.safetensors") == {"none": "none", "b": "b.safetensors"}
    assert negatives("--negatives", "none", "--negative", "null") == {"none": "none", "null": "null"}
    assert_one_line_error(
        SettingsError,
        lambda: negatives("--negative", "learned=runs/b.safetensors"),
        "--negative learned=runs/b.safetensors",
        "taken by the configured negative 'runs/a.safetensors'",
        "--negatives",
    )
    assert (
        settings_from_args(
            parse_evaluate_args(["--config", str(config), "--negative", "none"])
        ).baseline_label()
        == "null"
    )


def test_config_then_command_line(tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text(
        "model: tiny\nbenchmark: parti\nout: o\nnegatives: {base: null, words: 'text:blurry, ugly'}\n"
        "judges: {clip: {model: tiny}, pickscore: null}\nseeds: [0, 1]\nsteps: 4\n"
    )
    s = settings_from_args(
        parse_evaluate_args(["--config", str(config), "--steps", "2", "--judge-opt", "model=x"])
    )
    assert s.negatives == {"base": "null", "words": "text:blurry, ugly"}
    assert (s.steps, s.seeds, s.judges) == (2, [0, 1], ["clip", "pickscore"])
    judges = {j.name: j for j in judges_of(s)}
    assert judges["clip"].options == {"model": "tiny"}  # the judge's own option wins over "*"
    assert judges["pickscore"].options == {"model": "x"}


def test_unknown_config_key_is_one_line(tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text("model: tiny\nguidance: 3\n")
    assert_one_line_error(
        UsageError,
        lambda: settings_from_args(parse_evaluate_args(["--config", str(config)])),
        "Option 'guidance' is not accepted (did you mean --guidance-scale?)",
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--negatives", "null", "--seeds", "0,x"], "--seeds must be comma-separated integers"),
        (["--negatives", "null", "--seeds", "1,1"], "repeats a seed"),
        (["--negatives", "null", "--steps", "0"], "--steps must be >= 1"),
        (["--negatives", "null", "--baseline", "other"], "--baseline 'other' is none of the negatives"),
        (["--negatives", "null", "--stages", "generate,draw"], "unknown stage 'draw'"),
        ([], "--negatives is required"),
    ],
)
def test_bad_settings_are_one_line(argv, message):
    assert_one_line_error(SettingsError, lambda: settings(*argv), message)


def test_judge_options_parse():
    assert parse_judge_option("model=tiny") == ("*", "model", "tiny")
    assert parse_judge_option("hpsv2.1:scale=100") == ("hpsv2.1", "scale", 100)
    assert_one_line_error(SettingsError, lambda: parse_judge_option("model"), "[JUDGE:]KEY=VALUE")


def test_judges():
    hps = resolve_judge("hpsv2.1")
    assert (hps.reward, hps.options, hps.scale, hps.hps_version) == (
        "hpsv2",
        {"model": "v2.1"},
        100.0,
        "v2.1",
    )
    assert resolve_judge("hpsv2.0", {"model": "tiny"}).hps_version == "v2.0"
    assert_one_line_error(JudgeError, lambda: resolve_judge("hpsv2"), "ambiguous", "hpsv2.1")
    assert_one_line_error(JudgeError, lambda: resolve_judge("vibes"), "unknown judge 'vibes'")
    assert natural_judges("toyworld") == ["toy-pref", "toy-independent"]
    assert natural_judges("hpsv2")[0] == "hpsv2.1"
    assert natural_judges("my_prompts.txt") == ["pickscore", "hpsv2.1", "imagereward"]
    for toy in ("toy", "toy-sibling", "toy-flow"):  # a prompt file drawn by a toy generator: the toy judges
        assert natural_judges("my_prompts.txt", toy) == ["toy-pref", "toy-independent"], toy


def test_judge_options_must_name_a_judge_of_the_run():
    s = settings("--negatives", "null", "--judges", "clip", "--judge-opt", "pickscore:model=tiny")
    assert_one_line_error(SettingsError, lambda: judges_of(s), "options for judge 'pickscore'")


def test_shipped_benchmarks():
    parti = load_benchmark("parti")
    assert len(parti.items) == 1632
    categories = [item.tags["category"] for item in parti.items]
    assert len(set(categories)) == 12 and categories.count("Animals") == 314
    assert parti.breakdowns == ("category", "challenge")
    assert len(load_benchmark("imagereward").items) == 100
    limited = load_benchmark("parti", limit=5)
    assert len(limited.items) == 5 and not limited.complete


def write_hps_prompts(folder, per_style):
    folder.mkdir(parents=True, exist_ok=True)
    for style in HPS_STYLES:
        (folder / f"{style}.json").write_text(json.dumps([f"{style} prompt {i}" for i in range(per_style)]))
    return folder


def test_hpsv2_prompts_from_a_folder(tmp_path):
    folder = write_hps_prompts(tmp_path / "hps", 800)
    benchmark = load_benchmark("hpsv2", hpsv2_prompts=str(folder))
    assert len(benchmark.items) == 3200 and benchmark.complete
    assert benchmark.items[801].group == "concept-art" and benchmark.items[801].index == 1
    assert benchmark.items[801].tags == {"style": "concept-art"}
    assert not load_benchmark("hpsv2", hpsv2_prompts=str(folder), limit=8).complete


def test_hpsv2_prompts_from_the_hpsv2_cache(tmp_path, monkeypatch):
    write_hps_prompts(tmp_path / "datasets" / "benchmark", 3)
    monkeypatch.setenv("HPS_ROOT", str(tmp_path))
    benchmark = load_benchmark("hpsv2")
    assert len(benchmark.items) == 12 and not benchmark.complete  # the protocol has 800 per style


def test_hpsv2_prompts_offline_and_nowhere_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HPS_ROOT", str(tmp_path / "no-hps"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-hub"))
    assert_one_line_error(
        BenchmarkError,
        lambda: load_benchmark("hpsv2"),
        "HPSv2 benchmark prompts are not available (offline and not in the hub cache)",
        "hf download zhwang/HPDv2 --repo-type dataset",
        "--hpsv2-prompts",
    )


def test_unknown_benchmark_is_one_line():
    assert_one_line_error(BenchmarkError, lambda: load_benchmark("nope"), "unknown benchmark 'nope'")
