"""End to end: `renegx evaluate` on the tiny model writes a report whose tables are the caches."""

import json
import re

import numpy as np
import pytest
import torch
from assertions import assert_estimate
from PIL import Image

from renegx.evaluate.__main__ import evaluate_main
from renegx.evaluate.benchmarks import HPS_STYLES
from renegx.evaluate.protocol import hps_style_score, pair_outcomes
from renegx.evaluate.report import rate, score
from renegx.negatives.embedding import NegativeEmbedding

PROMPTS = ["a red circle", "a blue square", "a green triangle"]
JUDGES = {"clip": 100.0, "imagereward": 1.0}  # judge -> report scale


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One complete run: three negatives (null, a text, a learned file), two seeds, two tiny judges."""
    root = tmp_path_factory.mktemp("evaluate")
    (root / "shapes.txt").write_text("\n".join(PROMPTS) + "\n")
    embeds = 0.5 * torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(0))
    NegativeEmbedding(embeds).save(root / "learned.safetensors")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    argv = ["--model", "tiny", "--negatives", f"null,text:blurry, ugly,{root / 'learned.safetensors'}"]
    argv += [
        "--benchmark",
        str(root / "shapes.txt"),
        "--judges",
        ",".join(JUDGES),
        "--judge-opt",
        "model=tiny",
    ]
    argv += ["--seeds", "0,1", "--steps", "4", "--bootstrap", "300", "--out", str(root / "out")]
    try:
        assert evaluate_main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return root / "out"


LABELS = ["null", "text-blurry-ugly", "learned"]


def cached(out, judge, label):
    entries = json.loads((out / "scores" / judge / f"{label}.json").read_text())["images"]
    return {key: entry["score"] for key, entry in entries.items()}


def test_images_are_in_the_hpsv2_layout_with_sidecars(finished):
    for seed in (0, 1):
        for label in LABELS:
            for index, prompt in enumerate(PROMPTS):
                image = finished / f"seed{seed}" / label / "shapes" / f"{index:05d}.jpg"
                with Image.open(image) as opened:
                    assert opened.format == "JPEG"
                sidecar = json.loads(image.with_suffix(".json").read_text())
                assert (sidecar["prompt"], sidecar["seed"], sidecar["negative_name"]) == (prompt, seed, label)
                assert sidecar["num_inference_steps"] == 4


def test_report_tables_match_the_cached_scores(finished):
    markdown = (finished / "report.md").read_text()
    html = (finished / "report.html").read_text()
    report = json.loads((finished / "report.json").read_text())
    assert report["baseline"] == "null"
    for judge, scale in JUDGES.items():
        baseline = cached(finished, judge, "null")
        keys = sorted(baseline)
        assert len(keys) == 6
        for label in LABELS:
            scores = cached(finished, judge, label)
            mean = scale * np.mean([scores[k] for k in keys])
            assert report["judges"][judge]["means"][label]["all"] == pytest.approx(mean, rel=1e-12)
            row = f"| {label} | {score(mean)} | 6 |"
            assert row in markdown
            assert f"<td>{score(mean)}</td>" in html
            if label == "null":
                continue
            wins = pair_outcomes([scores[k] for k in keys], [baseline[k] for k in keys]).mean()
            estimate = report["judges"][judge]["versus_baseline"][label]["all"]["win_rate"]
            assert estimate["value"] == pytest.approx(wins)
            assert estimate["low"] <= wins <= estimate["high"]
            assert_estimate(estimate, n=3)  # resampled by prompt, both seeds together
            assert_estimate(report["judges"][judge]["versus_baseline"][label]["all"]["delta"], n=3)
            line = next(
                line for line in markdown.splitlines() if line.startswith(f"| {label} | {score(mean)}")
            )
            assert line.endswith(f"| {rate(estimate)} |")


def test_image_statistics_are_reported(finished):
    report = json.loads((finished / "report.json").read_text())
    for label in LABELS:
        stats = report["image_stats"][label]
        assert stats["images"] == 6 and stats["diversity_prompts"] == 3
        assert 0 <= stats["saturation"] <= 1 and stats["diversity"] > 0
        assert (
            f"| {label} | {score(stats['saturation'])} | {score(stats['colourfulness'])} |"
            in (finished / "report.md").read_text()
        )


def test_html_report_is_self_contained(finished):
    html = (finished / "report.html").read_text()
    pictures = sorted(p.name for p in (finished / "report_files").glob("*.png"))
    assert pictures == ["grid-shapes.png", "scores-clip.png", "scores-imagereward.png", "win-rates.png"]
    assert html.count('src="data:image/png;base64,') == len(pictures)
    assert not re.search(r'src="(?!data:)', html)
    markdown = (finished / "report.md").read_text()
    assert all(f"(report_files/{name})" in markdown for name in pictures)


def test_hpsv2_protocol_end_to_end(tmp_path, one_thread):
    """Two negatives with the same spec draw the same images (same noise), so every pair is a tie."""
    hps = tmp_path / "hps"
    hps.mkdir()
    for style in HPS_STYLES:
        (hps / f"{style}.json").write_text(json.dumps([f"{style} of a cat", f"{style} of a dog"]))
    out = tmp_path / "out"
    argv = [
        "--model",
        "tiny",
        "--negatives",
        "null,copy=null",
        "--benchmark",
        "hpsv2",
        "--hpsv2-prompts",
        str(hps),
    ]
    argv += ["--judges", "hpsv2.1", "--judge-opt", "model=tiny", "--steps", "2", "--out", str(out)]
    assert evaluate_main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    judge = report["judges"]["hpsv2.1"]
    assert judge["judge"]["hps_version"] == "v2.1"
    markdown = (out / "report.md").read_text()
    raw = cached(out, "hpsv2.1", "null")
    for style in HPS_STYLES:
        expected = hps_style_score([raw[f"seed0/{style}/{i:05d}"] for i in range(2)])
        entry = judge["hpsv2"]["null"]["styles"][style]
        assert (entry["mean"], entry["std"]) == pytest.approx((expected.mean, expected.std))
        assert f"{expected.mean:.2f} ± {expected.std:.4f}" in markdown
        assert (out / "seed0" / "null" / style / "00001.jpg").read_bytes() == (
            out / "seed0" / "copy" / style / "00001.jpg"
        ).read_bytes()
    versus = judge["versus_baseline"]["copy"]
    assert versus["all"]["win_rate"]["value"] == 0.5 and versus["all"]["delta"]["value"] == 0.0
    assert set(versus["style"]) == set(HPS_STYLES)
    assert "not the official protocol" in markdown  # 2 prompts per style, not 800


def test_sampler_path_writes_its_record(tmp_path, one_thread):
    (tmp_path / "p.txt").write_text("a red circle\n")
    out = tmp_path / "out"
    argv = ["--model", "tiny", "--negatives", "null,text:blurry", "--benchmark", str(tmp_path / "p.txt")]
    argv += ["--sampler", "cfg", "--steps", "2", "--stages", "generate", "--out", str(out)]
    assert evaluate_main(argv) == 0
    sidecar = json.loads((out / "seed0" / "text-blurry" / "p" / "00000.json").read_text())
    assert sidecar["sampler"] == "cfg" and sidecar["nfe"] == 4


def test_toyworld_end_to_end(tmp_path, one_thread):
    out = tmp_path / "out"
    argv = ["--model", "toy", "--negatives", "null,text:blurry, noisy", "--benchmark", "toyworld"]
    argv += ["--limit", "4", "--steps", "4", "--out", str(out)]
    assert evaluate_main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["judges"]) == {"toy-pref", "toy-independent"}
    for judge in report["judges"].values():
        assert judge["means"]["text-blurry-noisy"]["n"] == 4


def test_a_prompt_file_drawn_by_a_toy_generator_is_read_by_the_ground_truth(tmp_path, one_thread):
    """Any prompts a toy generator draws are toy pictures: kept losslessly, judged by the toy judges and read
    by the ground truth beside them, as the toyworld benchmark's are."""
    prompts = ("a red circle on a white background", "a blue square on a black background")
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n")
    out = tmp_path / "out"
    argv = ["--model", "toy-flow", "--negatives", "null,text:blurry", "--benchmark", str(tmp_path / "p.txt")]
    assert evaluate_main([*argv, "--steps", "2", "--out", str(out)]) == 0
    written = sorted(p.suffix for p in (out / "seed0" / "null" / "p").iterdir())
    assert written == [".json", ".json", ".png", ".png"]
    report = json.loads((out / "report.json").read_text())
    assert set(report["judges"]) == {"toy-pref", "toy-independent"}
    truth = report["ground_truth"]
    assert truth["images"] == 2 and {"defective", "adherence"} <= set(truth["table"]["text-blurry"]), truth
