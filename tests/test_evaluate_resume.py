"""Every stage resumes: finished images are not drawn again, cached scores are not computed again."""

import pytest
from assertions import assert_one_line_error
from PIL import Image

from renegx.evaluate.benchmarks import load_benchmark
from renegx.evaluate.generation import generate_images
from renegx.evaluate.judges import Judge, resolve_judge
from renegx.evaluate.layout import Layout
from renegx.evaluate.run import run_evaluation
from renegx.evaluate.scoring import score_images
from renegx.evaluate.settings import SettingsError, parse_evaluate_args, settings_from_args

NEGATIVES = "null,text:blurry, ugly"


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "shapes.txt"
    path.write_text("a red circle\na blue square\n")
    return path


def settings(prompts, out, *extra, negatives=NEGATIVES):
    argv = ["--model", "tiny", "--benchmark", str(prompts), "--negatives", negatives, "--seeds", "0,1"]
    argv += ["--steps", "2", "--judges", "clip", "--judge-opt", "model=tiny", "--out", str(out), *extra]
    return settings_from_args(parse_evaluate_args(argv))


def test_generation_draws_only_what_is_missing(prompts, tmp_path, one_thread):
    s = settings(prompts, tmp_path / "out")
    benchmark, layout = load_benchmark(s.benchmark), Layout(tmp_path / "out")
    assert generate_images(s, benchmark, layout) == {"null": 4, "text-blurry-ugly": 4}
    stamps = {path: path.stat().st_mtime_ns for path in layout.root.rglob("*.jpg")}
    assert len(stamps) == 8
    assert generate_images(s, benchmark, layout) == {"null": 0, "text-blurry-ugly": 0}

    # A run killed between an image and its sidecar: that image is drawn again, identically (same seed).
    victim = layout.image(1, "null", "shapes", 0)
    before = victim.read_bytes()
    victim.with_suffix(".json").unlink()
    assert generate_images(s, benchmark, layout) == {"null": 1, "text-blurry-ugly": 0}
    assert victim.read_bytes() == before
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p != victim)

    # A negative added later: only its images are drawn.
    more = settings(prompts, tmp_path / "out", negatives=NEGATIVES + ",none")
    assert generate_images(more, benchmark, layout) == {"null": 0, "text-blurry-ugly": 0, "none": 4}


def test_a_rerun_with_other_generation_settings_stops(prompts, tmp_path, one_thread):
    s = settings(prompts, tmp_path / "out", "--negatives", "null", "--seeds", "0")
    benchmark, layout = load_benchmark(s.benchmark), Layout(tmp_path / "out")
    generate_images(s, benchmark, layout)
    changed = settings(prompts, tmp_path / "out", "--negatives", "null", "--seeds", "0", "--steps", "3")
    assert_one_line_error(
        SettingsError,
        lambda: generate_images(changed, benchmark, layout),
        "holds images made with steps=2, this run asks for 3: use another --out",
    )
    renamed = settings(prompts, tmp_path / "out", "--negatives", "null=text:ugly", "--seeds", "0")
    assert_one_line_error(
        SettingsError, lambda: generate_images(renamed, benchmark, layout), "holds images of negative 'null'"
    )


def test_per_prompt_noise_gives_each_prompt_its_own_noise_and_is_kept_apart(prompts, tmp_path, one_thread):
    """`--noise per-prompt` draws prompt i of seed s from seed s × 1000 + i (the training's held-out table's
    noise); a folder drawn with shared noise refuses it."""
    import json

    s = settings(prompts, tmp_path / "own", "--negatives", "null", "--seeds", "3", "--noise", "per-prompt")
    benchmark, layout = load_benchmark(s.benchmark), Layout(tmp_path / "own")
    generate_images(s, benchmark, layout)
    sidecars = [
        json.loads(layout.image(3, "null", "shapes", i).with_suffix(".json").read_text()) for i in (0, 1)
    ]
    assert [(c["seed"], c["noise_seed"]) for c in sidecars] == [(3, 3000), (3, 3001)]
    shared = settings(prompts, tmp_path / "shared", "--negatives", "null", "--seeds", "3000")
    generate_images(shared, benchmark, Layout(tmp_path / "shared"))
    # Prompt 0 drawn from its own noise 3000 is the picture a shared seed 3000 draws for it.
    first = [
        Image.open(layout.image(3, "null", "shapes", 0)),
        Image.open(Layout(tmp_path / "shared").image(3000, "null", "shapes", 0)),
    ]
    assert first[0].tobytes() == first[1].tobytes()
    again = settings(
        prompts, tmp_path / "shared", "--negatives", "null", "--seeds", "3000", "--noise", "per-prompt"
    )
    assert_one_line_error(
        SettingsError,
        lambda: generate_images(again, benchmark, Layout(tmp_path / "shared")),
        "holds images made with noise='shared', this run asks for 'per-prompt'",
    )


def test_scores_are_cached_per_image(prompts, tmp_path, one_thread):
    s = settings(prompts, tmp_path / "out")
    benchmark, layout = load_benchmark(s.benchmark), Layout(tmp_path / "out")
    generate_images(s, benchmark, layout)
    judges = [resolve_judge("clip", {"model": "tiny"})]
    assert score_images(s, benchmark, layout, judges) == {"clip": 8}
    assert score_images(s, benchmark, layout, judges) == {"clip": 0}

    changed = layout.image(0, "null", "shapes", 1)
    with Image.open(changed) as image:
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(changed, format="JPEG")
    assert score_images(s, benchmark, layout, judges) == {"clip": 1}

    rescaled = [resolve_judge("clip", {"model": "tiny", "scale": 2.0})]  # other options: other scores
    assert score_images(s, benchmark, layout, rescaled) == {"clip": 8}


def test_report_stage_alone_reads_the_caches(prompts, tmp_path, one_thread, monkeypatch):
    out = tmp_path / "out"
    run_evaluation(settings(prompts, out, "--stages", "generate,score"))
    assert not (out / "report.md").exists()

    def no_models(self):
        raise AssertionError("the report stage must not build a judge")

    monkeypatch.setattr(Judge, "build", no_models)
    report = run_evaluation(settings(prompts, out, "--stages", "report"))
    assert report == out / "report.html" and (out / "report.md").is_file()
