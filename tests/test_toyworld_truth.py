"""Ground truth of toy-world pictures: the new meters, the attribute reading and the paired truth table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from assertions import assert_estimate

from renegx.toyworld.meters import DEFECT_METERS, border_contact, defect_flags, stray_pixels
from renegx.toyworld.render import render_batch
from renegx.toyworld.scene import (
    COLOURS,
    DEFECTS,
    OVERDONE,
    POSITIONS,
    SHAPES,
    Scene,
    caption,
    named_attributes,
    sample_scene,
)
from renegx.toyworld.truth import read_pictures, read_positions, read_sizes, truth_table


def _pictures(scenes: list[Scene], seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(render_batch(scenes, seed)).permute(0, 3, 1, 2).float() / 255


def _scenes(seed: int, count: int, defects: tuple[str, ...] = ()) -> list[Scene]:
    rng = np.random.default_rng(seed)
    drawn = [sample_scene(rng) for _ in range(count)]
    return [Scene(s.shape, s.colour, s.size, s.position, s.background, defects) for s in drawn]


def test_every_caption_names_what_its_scene_shows():
    rng = np.random.default_rng(2)
    seen = set()
    for _ in range(800):
        scene = sample_scene(rng)
        text = caption(scene, rng, mention_defects=False)
        named = named_attributes(text)
        seen |= set(named)
        for attribute, value in named.items():
            assert getattr(scene, attribute) == value, (text, attribute)
        assert {"shape", "colour"} <= set(named)
    assert seen == {"shape", "colour", "size", "background", "position"}
    assert named_attributes("a small blue square at the top on a black background") == {
        "shape": "square",
        "colour": "blue",
        "size": "small",
        "background": "black",
        "position": "top",
    }


def test_sizes_are_read_from_the_shape_area():
    """Every clean rendered scene's size is read right; pictures with a defect mostly (docs/toyworld.md)."""
    scenes = _scenes(8, 400)
    read = read_sizes(_pictures(scenes, seed=8), [s.shape for s in scenes])
    assert all(r == s.size for r, s in zip(read, scenes, strict=True))
    rng = np.random.default_rng(9)
    defective = [s for s in (sample_scene(rng) for _ in range(600)) if s.defects][:300]
    read = read_sizes(_pictures(defective, seed=9), [s.shape for s in defective])
    assert np.mean([r == s.size for r, s in zip(read, defective, strict=True)]) > 0.8


def test_overdone_renders_trip_their_own_meters_and_crisp_scenes_do_not():
    """Colour pushed past the palette reads garish, an over-sharpened edge haloed, on the shipped thresholds;
    crisp clean renders of other scenes than the calibration's are neither (a crisp edge is not a halo)."""
    from renegx.toyworld import meter_thresholds
    from renegx.toyworld.meters import meter_readings

    thresholds = meter_thresholds()
    clean = defect_flags(meter_readings(_pictures(_scenes(10, 300), seed=10)), thresholds)
    assert float(clean["garish"].float().mean()) <= 0.01 and float(clean["haloed"].float().mean()) <= 0.01
    for defect, kind in (("oversaturated", "garish"), ("oversharpened", "haloed")):
        flags = defect_flags(meter_readings(_pictures(_scenes(10, 300, (defect,)), seed=10)), thresholds)
        assert float(flags[kind].float().mean()) > 0.7, defect


def test_cropped_shapes_touch_the_border_and_clean_ones_stay_inside():
    clean = _pictures(_scenes(3, 200))
    cropped = _pictures(_scenes(3, 200, ("cropped",)))
    assert float(torch.quantile(border_contact(clean), 0.9)) < 1.0
    assert float(border_contact(cropped).median()) > 1.0


def test_clutter_strokes_are_stray_pixels_and_anti_aliased_edges_are_not():
    clean = _pictures(_scenes(4, 200))
    cluttered = _pictures(_scenes(4, 200, ("cluttered",)))
    assert float(torch.quantile(stray_pixels(clean), 0.9)) < 0.01
    assert float(stray_pixels(cluttered).median()) > 0.02


def test_positions_are_read_from_the_shape_centre():
    scenes = [
        Scene(shape, colour, "small", position, background)
        for shape in SHAPES
        for colour in list(COLOURS)[:3]
        for position in POSITIONS
        for background in ("white", "black")
    ]
    read = read_positions(_pictures(scenes, seed=5))
    accuracy = np.mean([r == s.position for r, s in zip(read, scenes, strict=True)])
    assert accuracy >= 0.95


def test_a_defect_flag_per_meter_with_a_threshold_and_none_without():
    readings = {reading: torch.tensor([0.5, 2.0]) for reading, _, _ in DEFECT_METERS.values()}
    thresholds = {"sharpness_min": 1.0, "border_contact_max": 1.0}
    flags = defect_flags(readings, thresholds)
    assert set(flags) == {"soft", "cropped"}
    assert flags["soft"].tolist() == [True, False] and flags["cropped"].tolist() == [False, True]


class _Classifier:
    """Describes every picture as a red circle on white: what a reading of the prompts then says."""

    def describe(self, images):
        return [{"shape": "circle", "colour": "red", "background": "white", "defects": []} for _ in images]


def test_reading_scores_only_the_attributes_a_prompt_names():
    images = _pictures([Scene("circle", "red", "large", "center", "white")] * 4)
    prompts = [
        "a red circle",
        "a red square on a white background",
        "a red circle on the left",
        "a small red circle",
    ]
    readings = read_pictures(images, prompts, {"contrast_min": 0.0}, _Classifier())
    # position is read and reported, but a picture adheres without it (the generator ignores position words)
    assert readings["adherence"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert readings["shape_correct"].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert np.isnan(readings["background_correct"][0]) and readings["background_correct"][1] == 1.0
    assert readings["position_correct"][2] == 0.0 and np.isnan(readings["position_correct"][0])
    assert readings["size_correct"][3] == 0.0 and np.isnan(readings["size_correct"][0])
    assert readings["defective"].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_truth_table_pairs_each_negative_with_the_baseline_over_prompts():
    prompt_ids = np.repeat(np.arange(20), 2)
    null = {
        "defective": np.tile([1.0, 0.0], 20),
        "adherence": np.repeat([1.0, 0.0], 20),
        "position_correct": np.full(40, np.nan),
    }
    learned = {
        "defective": np.zeros(40),
        "adherence": null["adherence"],
        "position_correct": np.full(40, np.nan),
    }
    table = truth_table({"null": null, "learned": learned}, prompt_ids)
    assert table["null"]["defective"] == 0.5 and table["learned"]["defective"] == 0.0
    # each prompt's pair is one defective picture in two: the share is 0.5 whatever prompts are drawn
    assert table["null"]["defective_ci"] == {"value": 0.5, "low": 0.5, "high": 0.5, "n": 20}
    assert table["learned"]["defective_ci"] == {"value": 0.0, "low": 0.0, "high": 0.0, "n": 20}
    low, high = table["null"]["adherence_ci"]["low"], table["null"]["adherence_ci"]["high"]
    assert low < 0.5 < high  # half the prompts adhere: resampling prompts moves the share
    delta = table["learned"]["defective_minus_null"]
    assert_estimate(delta, n=20)
    assert (delta["value"], delta["low"], delta["high"]) == pytest.approx((-0.5, -0.5, -0.5))
    assert "position_correct_minus_null" not in table["learned"]
    assert np.isnan(table["learned"]["position_correct"])


def test_shipped_meters_record_every_threshold_the_floor_and_each_recall():
    from renegx.toyworld import meter_thresholds

    thresholds = meter_thresholds()
    assert {key for _, key, _ in DEFECT_METERS.values()} <= set(thresholds)
    assert thresholds["floor"] <= 0.1 and thresholds["floor_rendered"] <= 0.05
    assert thresholds["recall_cropped"] > 0.8 and thresholds["recall_faded"] > 0.5
    for defect in (*DEFECTS, *OVERDONE):
        assert 0 <= thresholds[f"caught_{defect}_rendered"] <= thresholds[f"recall_{defect}_rendered"] <= 1
    assert thresholds["caught_oversaturated_rendered"] > 0.7  # orange is at the gamut's edge already
    assert thresholds["caught_oversharpened_rendered"] > 0.9
    assert thresholds["floor_garish"] == thresholds["floor_haloed"] == 0.0  # above every clean picture


@pytest.mark.slow
def test_the_recorded_floor_is_what_the_meters_flag_on_fresh_rendered_scenes():
    """The floor is measured, not set: the build's fresh clean scenes (never used to calibrate), rendered,
    flagged by the shipped thresholds at exactly the recorded shares, per kind and in all."""
    from renegx.toyworld import meter_thresholds
    from renegx.toyworld.build import RECIPE, clean_and_defective
    from renegx.toyworld.meters import defective, meter_readings

    thresholds, settings = meter_thresholds(), RECIPE["meters"]
    _, fresh, _ = clean_and_defective(settings["floor_seed"], settings["pictures"])
    readings = meter_readings(fresh)
    one = 1 / settings["pictures"]
    assert float(defective(readings, thresholds).float().mean()) == pytest.approx(
        thresholds["floor_rendered"], abs=one
    )
    for kind, flag in defect_flags(readings, thresholds).items():
        assert float(flag.float().mean()) == pytest.approx(thresholds[f"floor_{kind}_rendered"], abs=one)


def test_held_out_summary_reports_ground_truth_beside_the_judges_with_a_labelled_grid(tmp_path, monkeypatch):
    from PIL import Image

    import renegx.evaluate.grids as grids
    from renegx.evaluate.held_out import GRID_FILE, HeldOutSummary
    from renegx.rewards import ToyPreference
    from renegx.toyworld.truth import meter_floor
    from renegx.train.module import ReNegModule

    module = ReNegModule(model="toy", reward=ToyPreference(), num_inference_steps=2, stop_steps=1)
    prompts = ["a red circle", "a blue square on a black background", "a green triangle on the left"]
    drawn = []
    save = grids.save_labelled_grid
    monkeypatch.setattr(grids, "save_labelled_grid", lambda *args: drawn.append(args) or save(*args))
    summary = HeldOutSummary(prompts=prompts, judges=["toy-pref"], seeds=[0, 1]).summarise(module, tmp_path)
    written = json.loads((tmp_path / "summary.json").read_text())  # the file, not only what came back
    assert written["judges"] == summary["judges"] and written["seeds"] == [0, 1]
    for other in ("null", "handcrafted"):
        assert_estimate(written["judges"]["toy-pref"][f"learned_minus_{other}"], n=3)
    truth = written["ground_truth"]
    assert set(truth) == {"null", "handcrafted", "learned"}
    for name in ("handcrafted", "learned"):
        for measure in ("defective", "adherence", "cropped", "position_correct"):
            estimate = truth[name][f"{measure}_minus_null"]
            assert_estimate(estimate, n=1 if measure == "position_correct" else 3)  # one prompt names one
            assert estimate["low"] <= estimate["value"] <= estimate["high"]
    # the learned embedding starts as null: the same pictures, no difference
    assert truth["learned"]["defective_minus_null"] == {"value": 0.0, "low": 0.0, "high": 0.0, "n": 3}
    assert summary["meter_floor"] == meter_floor()
    with Image.open(tmp_path / GRID_FILE) as grid:
        assert grid.width > 6 * 32 * 4 and grid.height > 3 * 32 * 4  # labels beside and above the pictures
    # the columns name the seeds summary.json lists (prompt-major), not the noise each makes for its prompt
    ((rows, row_labels, column_labels, path),) = drawn
    assert path == tmp_path / GRID_FILE and all(row.shape[0] == 6 for row in rows)
    assert [label.split("\n")[0] for label in row_labels] == ["null", "handcrafted", "learned"]
    assert column_labels == [grids.prompt_seed_label(p, s) for p in prompts for s in written["seeds"]]
    assert [label.split("\n")[-1] for label in column_labels] == ["seed 0", "seed 1"] * 3


def test_toyworld_evaluation_stores_png_and_reports_ground_truth_beside_the_judges(tmp_path):
    from PIL import Image

    from renegx.evaluate.__main__ import evaluate_main
    from renegx.toyworld.truth import meter_floor

    argv = ["--model", "toy", "--benchmark", "toyworld", "--limit", "3", "--judges", "toy-pref"]
    argv += ["--negatives", "null,text:blurry, noisy", "--seeds", "0,1", "--steps", "2", "--bootstrap", "200"]
    assert evaluate_main([*argv, "--out", str(tmp_path / "out")]) == 0
    images = sorted((tmp_path / "out" / "seed0" / "null").rglob("*.png"))
    assert len(images) == 3 and not list((tmp_path / "out").rglob("*.jpg"))
    with Image.open(images[0]) as image:
        assert image.format == "PNG"
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    truth = report["ground_truth"]
    assert truth["images"] == 6 and truth["meter_floor"] == meter_floor()
    assert set(truth["table"]) == {"null", "text-blurry-noisy"}
    estimate = truth["table"]["text-blurry-noisy"]["defective_minus_null"]
    assert_estimate(estimate, n=3)
    assert estimate["low"] <= estimate["value"] <= estimate["high"]
    assert "Ground truth" in (tmp_path / "out" / "report.md").read_text()


def test_negatives_drawn_together_share_the_layout_steps_and_match_one_at_a_time():
    """`sample_each` runs the steps before `negative_from` once for every negative and draws what
    `sample_images` draws for each negative alone."""
    from renegx.rewards import ToyPreference
    from renegx.train.module import ReNegModule

    module = ReNegModule(
        model="toy", reward=ToyPreference(), num_inference_steps=6, stop_steps=2, negative_from=0.5
    )
    shift = torch.randn(module.null_embeds.shape, generator=torch.Generator().manual_seed(0))
    negatives = {"null": module.null_embeds, "other": module.null_embeds + 0.5 * shift}
    prompts, seeds = ["a red circle", "a small blue square"], [3, 4]
    with torch.no_grad():
        together = module.sample_each(prompts, negatives, seeds)
        for name, negative in negatives.items():
            torch.testing.assert_close(together[name], module.sample_images(prompts, negative, seeds))
    assert not torch.allclose(together["null"], together["other"])


def test_held_out_metrics_flatten_every_learned_minus_null_with_its_bounds():
    from renegx.evaluate.held_out import held_out_metrics

    summary = {
        "judges": {
            "toy-pref": {
                "null": 0.5,
                "learned": 0.6,
                "learned_minus_null": {"value": 0.1, "low": 0.05, "high": 0.15, "n": 8},
            }
        },
        "ground_truth": {
            "learned": {
                "defective_minus_null": {"value": -0.1, "low": -0.2, "high": -0.01, "n": 8},
                "adherence_minus_null": {"value": 0.0, "low": -0.01, "high": 0.02, "n": 8},
            }
        },
    }
    metrics = held_out_metrics(summary)
    assert metrics["held_out/toy-pref_minus_null"] == pytest.approx(0.1)
    assert metrics["held_out/toy-pref_minus_null_low"] == 0.05
    assert metrics["held_out/defective_minus_null_high"] == -0.01
    assert metrics["held_out/adherence_minus_null_low"] == -0.01
    assert len(metrics) == 9
