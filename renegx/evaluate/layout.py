"""Where an evaluation keeps everything under its `--out` folder.

    <out>/evaluation.json                         generation settings and negatives (checked on resume)
    <out>/benchmark.json                          this run's prompts (group, index, prompt, tags)
    <out>/seed<S>/<negative>/<group>/<idx:05d>.jpg (+ .json sidecar; .png for the toy world, lossless)
    <out>/scores/<judge>/<negative>.json          per-image scores of one judge (the cache)
    <out>/scores/image-stats/<negative>.json      saturation, colourfulness, seed diversity
    <out>/scores/ground-truth/<negative>.json     the toy world's meters and classifier per image
    <out>/report.md, report.html, report.json, report_files/*.png

`<out>/seed<S>/<negative>` is an image root in the official HPSv2 layout (`<style>/<idx:05d>.jpg`, idx the
prompt's index in that style's list): `hpsv2.evaluate(<out>/seed0/null, hps_version="v2.1")` reads it as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STATS = "image-stats"
GROUND_TRUTH = "ground-truth"


def toy_pictures(benchmark: str, model: str) -> bool:
    """Pictures of the toy world (its benchmark, or any prompts drawn by one of its generators): stored
    losslessly, since JPEG changes what the analytic meters read, and read by its ground truth."""
    from renegx.toyworld import TOY_MODELS

    return benchmark == "toyworld" or model in TOY_MODELS


def image_suffix(benchmark: str, model: str = "") -> str:
    return ".png" if toy_pictures(benchmark, model) else ".jpg"


@dataclass(frozen=True)
class Layout:
    root: Path
    suffix: str = ".jpg"

    @property
    def manifest(self) -> Path:
        return self.root / "evaluation.json"

    @property
    def benchmark(self) -> Path:
        return self.root / "benchmark.json"

    def image_root(self, seed: int, label: str) -> Path:
        return self.root / f"seed{seed}" / label

    def image(self, seed: int, label: str, group: str, index: int) -> Path:
        return self.image_root(seed, label) / group / f"{index:05d}{self.suffix}"

    def holds_images_of(self, label: str) -> bool:
        """Whether any finished image (one with its sidecar) of negative `label` exists, under any seed."""
        return any(self.root.glob(f"seed*/{label}/*/*.json"))

    @staticmethod
    def key(seed: int, group: str, index: int) -> str:
        """An image's key in a cache of one negative."""
        return f"seed{seed}/{group}/{index:05d}"

    def scores(self, judge: str, label: str) -> Path:
        return self.root / "scores" / judge / f"{label}.json"

    def stats(self, label: str) -> Path:
        return self.scores(STATS, label)

    def ground_truth(self, label: str) -> Path:
        return self.scores(GROUND_TRUTH, label)

    @property
    def report_files(self) -> Path:
        return self.root / "report_files"
