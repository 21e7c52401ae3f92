"""The scoring stage: every image scored by every judge, plus the judge-free image statistics, all cached.

A cache file holds, for one judge and one negative, each image's raw score and the SHA-1 of the image bytes
it was computed from; a rerun scores only images that are new or changed, and a cache made with other judge
options is discarded. Scores are read from the saved JPEGs, as the official HPSv2 evaluation does.
"""

from __future__ import annotations

import hashlib
import io
import json
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from renegx.evaluate.benchmarks import Benchmark
from renegx.evaluate.image_stats import DIVERSITY_SIZE, colourfulness, saturation, seed_diversity
from renegx.evaluate.judges import Judge
from renegx.evaluate.layout import Layout, toy_pictures
from renegx.evaluate.settings import EvaluationSettings
from renegx.files import atomic_write_json
from renegx.models.loading import resolve_device

SAVE_EVERY_S = 5.0  # a crash loses at most this much scoring


def read_image(data: bytes, size: int | None = None) -> np.ndarray:
    """JPEG/PNG bytes → `(H, W, 3)` float32 in [0, 1] (resized to `size`² when given)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        rgb = image.convert("RGB")
        if size is not None:
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.float32) / 255.0


def _read_cache(path, header: dict) -> dict:
    """The cache at `path` if it was made with `header`, else an empty one."""
    if path.is_file():
        cache = json.loads(path.read_text(encoding="utf-8"))
        if cache.get("header") == header:
            return cache
        tqdm.write(f"renegx: {path} was made with other settings; scoring again")
    return {"header": header, "images": {}}


def existing_images(settings: EvaluationSettings, benchmark: Benchmark, layout: Layout, label: str):
    """(key, seed, item, path) of the finished images of negative `label` (its sidecar exists)."""
    for seed in settings.seeds:
        for item in benchmark.items:
            path = layout.image(seed, label, item.group, item.index)
            if path.with_suffix(".json").is_file():
                yield layout.key(seed, item.group, item.index), seed, item, path


def stale_images(cache: dict, settings: EvaluationSettings, benchmark: Benchmark, layout: Layout, label: str):
    """(key, item, bytes, SHA-1) of the finished images of `label` that `cache` holds no entry for, or an
    entry made from other bytes."""
    stale = []
    for key, _, item, path in existing_images(settings, benchmark, layout, label):
        data = path.read_bytes()
        digest = hashlib.sha1(data).hexdigest()
        if cache["images"].get(key, {}).get("sha1") != digest:
            stale.append((key, item, data, digest))
    return stale


def score_images(
    settings: EvaluationSettings,
    benchmark: Benchmark,
    layout: Layout,
    judges: list[Judge],
    built: dict | None = None,
) -> dict[str, int]:
    """Score what no cache holds yet with each judge (`built`: judges' rewards already loaded, by name), then
    the image statistics; {judge: scored now}."""
    built = built or {}
    scored = {
        judge.name: _score_with_judge(judge, settings, benchmark, layout, built.get(judge.name))
        for judge in judges
    }
    _image_statistics(settings, benchmark, layout)
    if toy_pictures(settings.benchmark, settings.model):
        _ground_truth(settings, benchmark, layout)
    return scored


def _score_with_judge(judge: Judge, settings, benchmark, layout: Layout, reward=None) -> int:
    header = json.loads(json.dumps(judge.to_json()))
    caches, todo = {}, []
    for label in settings.negatives:
        cache = caches[label] = _read_cache(layout.scores(judge.name, label), header)
        todo += [(label, *image) for image in stale_images(cache, settings, benchmark, layout, label)]
    if not todo:
        return 0
    reward = (judge.build() if reward is None else reward).to(resolve_device(settings.device))
    last_save = time.monotonic()
    for start in tqdm(range(0, len(todo), settings.batch_size), desc=f"scoring ({judge.name})", unit="batch"):
        batch = todo[start : start + settings.batch_size]
        scores = _score_batch(reward, batch)
        for (label, key, _, _, digest), score in zip(batch, scores, strict=True):
            caches[label]["images"][key] = {"score": score, "sha1": digest}
        if time.monotonic() - last_save > SAVE_EVERY_S:
            _save(caches, judge.name, layout)
            last_save = time.monotonic()
    _save(caches, judge.name, layout)
    return len(todo)


def _score_batch(reward, batch) -> list[float]:
    """Raw judge scores of a batch; images of different sizes go through one at a time."""
    arrays = [read_image(data) for _, _, _, data, _ in batch]
    prompts = [item.prompt for _, _, item, _, _ in batch]
    device = next(reward.parameters()).device
    groups = (
        [list(range(len(arrays)))]
        if len({a.shape for a in arrays}) == 1
        else [[i] for i in range(len(arrays))]
    )
    scores = [0.0] * len(arrays)
    with torch.no_grad():
        for indices in groups:
            images = torch.from_numpy(np.stack([arrays[i] for i in indices])).permute(0, 3, 1, 2).to(device)
            values = reward(images, [prompts[i] for i in indices]).tolist()
            for i, value in zip(indices, values, strict=True):
                scores[i] = float(value)
    return scores


def _save(caches: dict, name: str, layout: Layout) -> None:
    for label, cache in caches.items():
        path = layout.scores(name, label)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, cache)


def _image_statistics(settings: EvaluationSettings, benchmark: Benchmark, layout: Layout) -> None:
    """Saturation and colourfulness per image; seed diversity per prompt with every seed drawn."""
    header = {"diversity_size": DIVERSITY_SIZE}
    for label in tqdm(settings.negatives, desc="image statistics", unit="negative"):
        path = layout.stats(label)
        cache = _read_cache(path, header)
        cache.setdefault("diversity", {})
        small: dict[tuple[str, int], list[tuple[int, str, np.ndarray]]] = {}
        changed = False
        for key, seed, item, image_path in existing_images(settings, benchmark, layout, label):
            data = image_path.read_bytes()
            digest = hashlib.sha1(data).hexdigest()
            if cache["images"].get(key, {}).get("sha1") != digest:
                image = read_image(data)
                cache["images"][key] = {
                    "sha1": digest,
                    "saturation": saturation(image),
                    "colourfulness": colourfulness(image),
                }
                changed = True
            small.setdefault((item.group, item.index), []).append((seed, digest, data))
        for (group, index), drawn in small.items():
            if len(drawn) < 2:
                continue
            entry = {"seeds": [seed for seed, _, _ in drawn], "sha1": [digest for _, digest, _ in drawn]}
            prompt_key = f"{group}/{index:05d}"
            if {k: v for k, v in cache["diversity"].get(prompt_key, {}).items() if k != "value"} != entry:
                arrays = [read_image(data, DIVERSITY_SIZE) for _, _, data in drawn]
                cache["diversity"][prompt_key] = {**entry, "value": seed_diversity(arrays)}
                changed = True
        if changed:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, cache)


def _ground_truth(settings: EvaluationSettings, benchmark: Benchmark, layout: Layout) -> None:
    """The toy world's meters and attribute classifier on every image (`renegx.toyworld.truth`)."""
    from renegx.toyworld import meter_thresholds
    from renegx.toyworld.truth import load_reader

    read, header = load_reader(), {"meters": meter_thresholds()}
    for label in settings.negatives:
        path = layout.ground_truth(label)
        cache = _read_cache(path, header)
        todo = stale_images(cache, settings, benchmark, layout, label)
        for start in range(0, len(todo), settings.batch_size):
            batch = todo[start : start + settings.batch_size]
            images = torch.from_numpy(np.stack([read_image(data) for _, _, data, _ in batch]))
            readings = read(images.permute(0, 3, 1, 2), [item.prompt for _, item, _, _ in batch])
            for row, (key, _, _, digest) in enumerate(batch):
                values = {m: float(v[row]) for m, v in readings.items()}
                cache["images"][key] = {
                    "sha1": digest,
                    **{m: None if v != v else v for m, v in values.items()},
                }
        if todo:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, cache)


def load_ground_truth(layout: Layout, label: str) -> dict[str, dict]:
    """Per image key the ground-truth readings of one negative ({} when never read)."""
    path = layout.ground_truth(label)
    return json.loads(path.read_text("utf-8"))["images"] if path.is_file() else {}


def load_scores(layout: Layout, judge: str, label: str) -> dict[str, float]:
    """Raw scores of one judge and negative by image key ({} when never scored)."""
    path = layout.scores(judge, label)
    if not path.is_file():
        return {}
    return {key: entry["score"] for key, entry in json.loads(path.read_text("utf-8"))["images"].items()}


def load_stats(layout: Layout, label: str) -> dict:
    path = layout.stats(label)
    return json.loads(path.read_text("utf-8")) if path.is_file() else {"images": {}, "diversity": {}}
