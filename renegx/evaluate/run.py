"""One evaluation run: load the benchmark, then the stages asked for (generate → score → report).

Each stage resumes from what the previous runs left in `--out`, so the same command can be rerun after a
crash, with more negatives, seeds or judges, or with `--stages report` alone to redo the report.
"""

from __future__ import annotations

import json
from pathlib import Path

from renegx.cli.terminal import set_threads
from renegx.evaluate.benchmarks import Benchmark, load_benchmark
from renegx.evaluate.generation import bank_fallbacks, check_and_record, generate_images, missing_images
from renegx.evaluate.judges import Judge, natural_judges, resolve_judge
from renegx.evaluate.layout import Layout, image_suffix
from renegx.evaluate.report import write_report
from renegx.evaluate.scoring import score_images
from renegx.evaluate.settings import EvaluationSettings, SettingsError
from renegx.files import removed_if_left_empty
from renegx.negatives.spec import check_negative_file


def judges_of(settings: EvaluationSettings) -> list[Judge]:
    """The judges of a run with their options ("*" options go to every judge, a judge's own win)."""
    names = (
        settings.judges if settings.judges is not None else natural_judges(settings.benchmark, settings.model)
    )
    shared = settings.judge_options.get("*", {})
    unknown = sorted(set(settings.judge_options) - {"*", *names})
    if unknown:
        raise SettingsError(
            f"options for judge '{unknown[0]}', which is not among the judges: {', '.join(names)}"
        )
    return [resolve_judge(name, {**shared, **settings.judge_options.get(name, {})}) for name in names]


def _benchmark(settings: EvaluationSettings, layout: Layout) -> Benchmark:
    """This run's prompts; a report-only run of a finished folder reads them from the folder."""
    if "generate" not in settings.stages and layout.benchmark.is_file():
        return Benchmark.from_json(json.loads(layout.benchmark.read_text(encoding="utf-8")))
    return load_benchmark(settings.benchmark, settings.hpsv2_prompts, settings.limit)


def judges_before_drawing(
    settings: EvaluationSettings, benchmark: Benchmark, layout: Layout, judges: list[Judge]
) -> dict:
    """When this run draws images and then scores them: every judge loaded now (on the CPU), so that one that
    cannot load stops the run before the first image is drawn; {judge name: its reward}."""
    if not {"generate", "score"} <= set(settings.stages):
        return {}
    if not any(missing_images(settings, benchmark, layout, label) for label in settings.negatives):
        return {}
    return {judge.name: judge.build() for judge in judges}


def run_evaluation(settings: EvaluationSettings) -> Path | None:
    """Run the stages of `settings`; returns the report's path when the report stage ran."""
    set_threads(settings.threads)
    judges = judges_of(settings)
    if "generate" in settings.stages:
        for spec in settings.negatives.values():  # before anything is written or loaded
            check_negative_file(spec)
    with removed_if_left_empty(settings.out) as folder:
        layout = Layout(folder, image_suffix(settings.benchmark, settings.model))
        benchmark = _benchmark(settings, layout)
        built = judges_before_drawing(settings, benchmark, layout, judges)
    if "generate" in settings.stages:
        generate_images(settings, benchmark, layout)
    elif not layout.manifest.is_file():
        check_and_record(settings, benchmark, layout)
    if "score" in settings.stages:
        score_images(settings, benchmark, layout, judges, built)
    if "report" not in settings.stages:
        return None
    generation = json.loads(layout.manifest.read_text(encoding="utf-8"))["generation"]
    generation["bank_fallbacks"] = bank_fallbacks(settings, benchmark, layout)  # lands in report.json
    for label, count in generation["bank_fallbacks"].items():
        print(f"renegx: bank '{label}': {count['fallback']} of {count['images']} images used its global row")
    report = write_report(settings, benchmark, layout, judges, generation)
    print(f"renegx: report in {report} (and report.md, report.json)")
    return report
