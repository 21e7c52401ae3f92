"""The report stage: `report.json` (every number), `report.md` and a self-contained `report.html`.

Both documents are rendered from one list of blocks (headings, paragraphs, tables, pictures), so they hold
the same tables; the Markdown links the PNGs in `report_files/`, the HTML embeds them (base64).
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from renegx.evaluate import plots
from renegx.evaluate.benchmarks import HPS_STYLES, Benchmark
from renegx.evaluate.grids import labelled_grid, prompt_seed_label
from renegx.evaluate.judges import Judge
from renegx.evaluate.layout import Layout
from renegx.evaluate.protocol import HPS_CHUNK, format_estimate
from renegx.evaluate.results import OVERALL, compute_results
from renegx.evaluate.settings import EvaluationSettings
from renegx.files import atomic_write_bytes, atomic_write_json, atomic_write_text

MISSING = "—"
GRID_PICTURE = 192  # px per picture in the report grids: small ones enlarged, large ones shrunk


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Picture:
    name: str  # file name under report_files/
    png: bytes
    caption: str


@dataclass
class Document:
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def add(self, kind: str, content) -> None:
        self.blocks.append((kind, content))


def score(value: float | None) -> str:
    return MISSING if value is None else f"{value:.4f}"


def rate(estimate: dict | None) -> str:
    """A win rate in percent with its interval."""
    return MISSING if estimate is None else format_estimate(estimate, 1, 100, signed=False)


def delta(estimate: dict | None) -> str:
    return MISSING if estimate is None else format_estimate(estimate)


def write_report(
    settings: EvaluationSettings, benchmark: Benchmark, layout: Layout, judges: list[Judge], generation: dict
) -> Path:
    """Compute the numbers from the caches and write the three report files; returns report.html's path."""
    steps = tqdm(total=3 + len(judges) + len(benchmark.groups()), desc="report", unit="step")
    results = compute_results(settings, benchmark, layout, judges)
    results["generation"] = generation
    atomic_write_json(layout.root / "report.json", results)
    steps.update(1)
    document = Document()
    _summary(document, settings, results, judges)
    if "ground_truth" in results:
        _ground_truth(document, results)
    for judge in judges:
        _judge_section(document, results, judge)
        steps.update(1)
    _win_rate_plot(document, results)
    _image_statistics(document, results)
    steps.update(1)
    for group, items in benchmark.groups().items():
        _grid(document, settings, layout, group, items)
        steps.update(1)
    layout.report_files.mkdir(parents=True, exist_ok=True)
    for kind, content in document.blocks:
        if kind == "picture":
            atomic_write_bytes(layout.report_files / content.name, content.png)
    atomic_write_text(layout.root / "report.md", render_markdown(document, layout.report_files.name))
    atomic_write_text(layout.root / "report.html", render_html(document))
    steps.update(1)
    steps.close()
    return layout.root / "report.html"


def _summary(document: Document, settings: EvaluationSettings, results: dict, judges: list[Judge]) -> None:
    bench = results["benchmark"]
    generation = results["generation"]
    document.add("h1", f"Evaluation: {bench['name']}")
    scope = "the full set" if bench["complete"] else "a subset (--limit): not the official protocol"
    options = ", ".join(f"{k}={v}" for k, v in generation["sampler_options"].items())
    document.add(
        "list",
        [
            f"model: `{generation['model']}`; sampler: {generation['sampler']}"
            + (f" ({options})" if options else ""),
            f"steps: {generation['steps']}, guidance scale: {generation['guidance_scale']}, "
            f"dtype: {generation['dtype']}",
            f"benchmark: {bench['name']}, {bench['prompts']} prompts ({scope}); seeds: "
            + ", ".join(map(str, results["seeds"])),
            "negatives: "
            + "; ".join(f"`{label}` = `{spec}`" for label, spec in results["negatives"].items()),
            f"baseline for paired comparisons: `{results['baseline']}` (same prompt, seed and noise; "
            "a pair scores 1 / 0.5 / 0; 95% intervals from a bootstrap over prompts, "
            f"{settings.bootstrap} resamples)",
            "judges: "
            + ", ".join(
                j.name + (f" (hps_version {j.hps_version})" if j.hps_version else "") for j in judges
            ),
        ],
    )


def _ground_truth(document: Document, results: dict) -> None:
    from renegx.toyworld.truth import ATTRIBUTES, DEFECT_KINDS

    truth, baseline = results["ground_truth"], results["baseline"]
    document.add("h2", "Ground truth (the toy world's meters and attribute classifier)")
    floor = truth["meter_floor"]
    document.add(
        "p",
        "Share of pictures the analytic meters call defective (lower is better; by kind: soft, noisy, "
        "flat, cropped, cluttered) and adherence: the share showing every attribute the prompt names "
        "(shape, colour and background read by the classifier, position from the shape's centre). A "
        "judge's gain that these do not confirm is reward hacking."
        + (f" Meter floor: {floor:.3f} of clean reconstructions are flagged." if floor is not None else "")
        + f" {truth['images']} images per negative.",
    )
    columns = ["defective", "adherence", *DEFECT_KINDS, *(f"{a}_correct" for a in ATTRIBUTES)]
    rows = []
    for label, row in truth["table"].items():
        cells = [label]
        for measure in columns:
            value = row.get(measure)
            pair = row.get(f"{measure}_minus_{baseline}")
            text = MISSING if value is None or value != value else f"{value:.3f}"
            if pair is not None and measure in ("defective", "adherence"):
                text += f" ({format_estimate(pair, 3)})"
            cells.append(text)
        rows.append(cells)
    headers = ["negative", f"defective (− {baseline} [95% CI])", f"adherence (− {baseline} [95% CI])"]
    headers += [*DEFECT_KINDS, *ATTRIBUTES]
    document.add("table", Table(headers, rows))


def _judge_section(document: Document, results: dict, judge: Judge) -> None:
    data = results["judges"][judge.name]
    baseline = results["baseline"]
    scale = f", scores ×{judge.scale:g}" if judge.scale != 1 else ""
    document.add(
        "h2",
        f"Judge: {judge.name}"
        + (f" (hps_version {judge.hps_version}{scale})" if judge.hps_version else scale),
    )
    rows = []
    for label, means in data["means"].items():
        versus = data["versus_baseline"].get(label, {}).get(OVERALL)
        rows.append(
            [
                label,
                score(means[OVERALL]),
                f"{means['n']}" + (f" ({means['missing']} missing)" if means["missing"] else ""),
                MISSING if versus is None else delta(versus["delta"]),
                MISSING if versus is None else rate(versus["win_rate"]),
            ]
        )
    document.add(
        "table",
        Table(
            [
                "negative",
                "mean",
                "images",
                f"Δ vs {baseline} [95% CI]",
                f"win rate vs {baseline} (%) [95% CI]",
            ],
            rows,
        ),
    )
    if data["hpsv2"] is not None:
        _hps_table(document, data["hpsv2"], judge)
    for breakdown in results["benchmark"]["breakdowns"]:
        _breakdown_table(document, data, breakdown, baseline)
    document.add(
        "picture",
        Picture(
            f"scores-{judge.name}.png",
            plots.score_distributions(judge.name, data["distributions"]),
            f"{judge.name} scores per negative",
        ),
    )


def _hps_table(document: Document, table: dict, judge: Judge) -> None:
    document.add("h3", f"HPSv2 benchmark (hps_version {judge.hps_version})")
    document.add(
        "p",
        f"Per style: mean of {HPS_CHUNK}-prompt chunk means ± std across chunks, scores ×100; Average: mean "
        "over all images (with several seeds a prompt's score is its mean over seeds).",
    )
    rows = []
    for label, entry in table.items():
        if entry is None:
            rows.append([label, *([MISSING] * len(HPS_STYLES)), "incomplete: not every prompt is scored"])
            continue
        cells = [f"{entry['styles'][s]['mean']:.2f} ± {entry['styles'][s]['std']:.4f}" for s in HPS_STYLES]
        rows.append([label, *cells, f"{entry['average']:.2f}"])
    document.add("table", Table(["negative", *HPS_STYLES, "Average"], rows))


def _breakdown_table(document: Document, data: dict, breakdown: str, baseline: str) -> None:
    document.add("h3", f"By {breakdown}")
    labels = list(data["means"])
    others = [label for label in labels if label != baseline]
    headers = [
        breakdown,
        *(f"{label} mean" for label in labels),
        *(f"{label} win rate vs {baseline} (%)" for label in others),
    ]
    values = next(iter(data["means"].values()))[breakdown]
    rows = []
    for value in values:
        row = [value, *(score(data["means"][label][breakdown][value]) for label in labels)]
        for label in others:
            estimate = data["versus_baseline"][label][breakdown][value]
            row.append(MISSING if estimate is None else rate(estimate["win_rate"]))
        rows.append(row)
    document.add("table", Table(headers, rows))


def _win_rate_plot(document: Document, results: dict) -> None:
    rates = {
        judge: {
            label: versus[OVERALL]["win_rate"]
            for label, versus in data["versus_baseline"].items()
            if versus[OVERALL] is not None
        }
        for judge, data in results["judges"].items()
    }
    if any(rates.values()):
        document.add("h2", "Win rates")
        png = plots.win_rate_bars(results["baseline"], rates)
        document.add("picture", Picture("win-rates.png", png, "paired win rate over the baseline per judge"))


def _image_statistics(document: Document, results: dict) -> None:
    document.add("h2", "Image statistics (no judge)")
    document.add(
        "p",
        "Mean HSV saturation (0–1) and Hasler–Süsstrunk colourfulness per image; seed diversity is the "
        "mean pairwise RMS pixel distance (0–1, at 64×64) between a prompt's seeds. A rise in saturation or "
        "a drop in diversity next to a judge's gain is a sign of reward hacking.",
    )
    rows = [
        [label, score(s["saturation"]), score(s["colourfulness"]), score(s["diversity"]), str(s["images"])]
        for label, s in results["image_stats"].items()
    ]
    document.add(
        "table", Table(["negative", "saturation", "colourfulness", "seed diversity", "images"], rows)
    )


def _grid(document: Document, settings: EvaluationSettings, layout: Layout, group: str, items) -> None:
    if settings.grid_prompts == 0:
        return
    seed, labels = settings.seeds[0], list(settings.negatives)
    shown = items[: settings.grid_prompts]
    rows = [
        _grid_row([layout.image(seed, label, item.group, item.index) for item in shown]) for label in labels
    ]
    title = f"{group}, seed {seed}"
    columns = [prompt_seed_label(item.prompt, seed) for item in shown]
    png = io.BytesIO()
    labelled_grid(rows, labels, columns, scale=max(1, GRID_PICTURE // rows[0].shape[-1])).save(
        png, format="PNG"
    )
    document.add(
        "picture", Picture(f"grid-{group}.png", png.getvalue(), f"images of {title}: one row per negative")
    )


def _grid_row(paths: list[Path | None]) -> torch.Tensor:
    """Pictures `(N, 3, S, S)` in [0, 1], at most GRID_PICTURE px; grey where an image is missing."""
    pictures = []
    for path in paths:
        if path is not None and path.is_file():
            with Image.open(path) as image:
                image = image.convert("RGB")
                image.thumbnail((GRID_PICTURE, GRID_PICTURE))
                pictures.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255)
        else:
            pictures.append(None)
    size = next((p.shape[-2:] for p in pictures if p is not None), (GRID_PICTURE, GRID_PICTURE))
    return torch.stack([torch.full((3, *size), 0.5) if p is None else p for p in pictures])


def render_markdown(document: Document, files: str) -> str:
    lines: list[str] = []
    for kind, content in document.blocks:
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + content, ""]
        elif kind == "p":
            lines += [content, ""]
        elif kind == "list":
            lines += [f"- {entry}" for entry in content] + [""]
        elif kind == "table":
            lines.append("| " + " | ".join(content.headers) + " |")
            lines.append("|" + "---|" * len(content.headers))
            lines += [
                "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in content.rows
            ]
            lines.append("")
        elif kind == "picture":
            lines += [f"![{content.caption}]({files}/{content.name})", ""]
    return "\n".join(lines)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.6em 0 1.4em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%}code{background:#f3f3f3}"""


def _inline(text: str) -> str:
    """HTML of a line with Markdown `code` spans."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{part}</code>" if i % 2 else part for i, part in enumerate(parts))


def render_html(document: Document) -> str:
    title = next((content for kind, content in document.blocks if kind == "h1"), "Evaluation")
    body: list[str] = []
    for kind, content in document.blocks:
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{_inline(content)}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline(content)}</p>")
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{_inline(entry)}</li>" for entry in content) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in content.headers)
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in content.rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "picture":
            data = base64.b64encode(content.png).decode("ascii")
            caption = html.escape(content.caption)
            image = f'<img src="data:image/png;base64,{data}" alt="{caption}">'
            body.append(f"<figure>{image}<figcaption>{caption}</figcaption></figure>")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
