"""The generation stage: every (negative, prompt, seed) drawn once, as a JPEG (PNG for the toy world) with a
JSON sidecar.

Pairs are fair by construction: an image's noise depends on its seed only (a generator per image), and
every negative runs with the same model, sampler, steps, scale and size, so image `seed0/A/x/00001.jpg` and
`seed0/B/x/00001.jpg` differ in the negative alone. An image counts as done once its sidecar exists (the
sidecar is written after the image), so a rerun draws only what is missing; the settings of the first run
are kept in `evaluation.json` and a rerun with different ones stops instead of mixing images.
"""

from __future__ import annotations

import json
import time

import torch
from tqdm.auto import tqdm

from renegx.evaluate.benchmarks import Benchmark, BenchmarkItem
from renegx.evaluate.layout import Layout
from renegx.evaluate.protocol import noise_seed
from renegx.evaluate.settings import EvaluationSettings, SettingsError
from renegx.files import atomic_write_json, write_image_with_sidecar
from renegx.models.loading import resolve_device

PIPELINE = "pipeline"  # the diffusers pipeline, batched: the default "sampler"


def sampler_choice(settings: EvaluationSettings) -> tuple[str, dict]:
    """(sampler name, its options): `--sampler-config`, then `--sampler`, then `--sampler-opt`."""
    name, options = None, {}
    if settings.sampler_config:
        from renegx.samplers.config import load_sampler_config

        name, options = load_sampler_config(settings.sampler_config)
    name = settings.sampler or name
    if name is None:
        return PIPELINE, {}
    common = {"steps": settings.steps, "guidance_scale": settings.guidance_scale}
    common.update(
        {k: v for k, v in (("height", settings.height), ("width", settings.width)) if v is not None}
    )
    return name, {**common, **options, **settings.sampler_options}


def generation_record(settings: EvaluationSettings) -> dict:
    """The settings every image of an output folder must share."""
    sampler, options = sampler_choice(settings)
    return {
        "model": settings.model,
        "model_config": settings.model_config,
        "benchmark": settings.benchmark,
        "sampler": sampler,
        "sampler_options": options,
        "steps": settings.steps,
        "noise": settings.noise,
        "guidance_scale": settings.guidance_scale,
        "height": settings.height,
        "width": settings.width,
        "clip_skip": settings.clip_skip,
        "dtype": settings.dtype,
        "bank_fallback": settings.bank_fallback,
        "jpeg_quality": settings.jpeg_quality,
    }


def check_and_record(settings: EvaluationSettings, benchmark: Benchmark, layout: Layout) -> None:
    """Stop when `--out` holds images made otherwise; then record this run's settings and prompts."""
    record = json.loads(json.dumps(generation_record(settings)))  # as it reads back from JSON
    negatives = dict(settings.negatives)
    layout.root.mkdir(parents=True, exist_ok=True)
    if layout.manifest.is_file():
        previous = json.loads(layout.manifest.read_text(encoding="utf-8"))
        previous["generation"].setdefault("noise", "shared")  # folders from before the setting
        for key, value in previous["generation"].items():
            if record.get(key) != value:
                raise SettingsError(
                    f"{layout.root} holds images made with {key}={value!r}, this run asks for "
                    f"{record.get(key)!r}: use another --out or the same settings"
                )
        for label, spec in previous["negatives"].items():
            if label in negatives and negatives[label] != spec and layout.holds_images_of(label):
                raise SettingsError(
                    f"{layout.root}/seed*/{label} holds images of negative '{spec}', "
                    f"not '{negatives[label]}': name this one differently (--negative NAME=SPEC)"
                )
        negatives = {**previous["negatives"], **negatives}
    if layout.benchmark.is_file():
        _check_same_prompts(Benchmark.from_json(json.loads(layout.benchmark.read_text("utf-8"))), benchmark)
    atomic_write_json(layout.manifest, {"generation": record, "negatives": negatives})
    atomic_write_json(layout.benchmark, benchmark.to_json())


def _check_same_prompts(previous: Benchmark, current: Benchmark) -> None:
    before = {(i.group, i.index): i.prompt for i in previous.items}
    for item in current.items:
        old = before.get((item.group, item.index))
        if old is not None and old != item.prompt:
            raise SettingsError(
                f"prompt {item.group}/{item.index:05d} changed since the images were drawn "
                f"({old!r} → {item.prompt!r}): use another --out"
            )


def missing_images(
    settings: EvaluationSettings, benchmark: Benchmark, layout: Layout, label: str
) -> list[tuple[int, BenchmarkItem]]:
    """The (seed, item) pairs of negative `label` whose image is not finished yet."""
    return [
        (seed, item)
        for seed in settings.seeds
        for item in benchmark.items
        if not layout.image(seed, label, item.group, item.index).with_suffix(".json").is_file()
    ]


def generate_images(settings: EvaluationSettings, benchmark: Benchmark, layout: Layout) -> dict[str, int]:
    """Draw every missing image of every negative; returns {label: images drawn now}."""
    check_and_record(settings, benchmark, layout)
    todo = {label: missing_images(settings, benchmark, layout, label) for label in settings.negatives}
    total = sum(len(jobs) for jobs in todo.values())
    done = len(settings.negatives) * len(settings.seeds) * len(benchmark.items) - total
    if total == 0:
        print(f"renegx: all {done} images exist in {layout.root}; nothing to draw")
        return dict.fromkeys(todo, 0)
    sampler, options = sampler_choice(settings)
    draw = _PipelineDrawer(settings) if sampler == PIPELINE else _SamplerDrawer(settings, sampler, options)
    # Every negative is loaded and checked before the first image, so a bad file stops the run at once.
    negatives = {
        label: draw.negative(settings.negatives[label], jobs) for label, jobs in todo.items() if jobs
    }
    progress = tqdm(total=total, desc="generating", unit="image")
    if done:
        progress.write(f"renegx: {done} images exist already; drawing the {total} missing")
    for label, negative in negatives.items():
        draw(label, negative, todo[label], layout, progress)
    progress.close()
    return {label: len(jobs) for label, jobs in todo.items()}


def bank_fallbacks(settings: EvaluationSettings, benchmark: Benchmark, layout: Layout) -> dict[str, dict]:
    """Per bank negative: how many of this run's images it drew, and how many of those with its global row
    (a prompt it does not hold), read from the sidecars."""
    counts = {}
    for label in settings.negatives:
        sidecars = [
            layout.image(seed, label, item.group, item.index).with_suffix(".json")
            for seed in settings.seeds
            for item in benchmark.items
        ]
        records = (
            json.loads(path.read_text(encoding="utf-8"))["negative"] for path in sidecars if path.is_file()
        )
        first = next(records, None)
        if first is None or first.get("kind") != "bank":
            continue
        rows = [first["bank_row"], *(record["bank_row"] for record in records)]
        counts[label] = {"images": len(rows), "fallback": rows.count("fallback")}
    return counts


def image_noise(settings: EvaluationSettings, seed: int, item: BenchmarkItem) -> int:
    """The generator seed of image (`seed`, `item`): `seed` itself, or with `noise: per-prompt` the prompt's
    own noise, `noise_seed(seed, item.index)`."""
    return noise_seed(seed, item.index) if settings.noise == "per-prompt" else seed


def _sidecar(settings: EvaluationSettings, label: str, negative, seed: int, item: BenchmarkItem) -> dict:
    return {
        "prompt": item.prompt,
        "seed": seed,
        "noise_seed": image_noise(settings, seed, item),
        "group": item.group,
        "index": item.index,
        "tags": item.tags,
        "model": settings.model,
        "negative_name": label,
        "negative": negative.sidecar(item.prompt),
    }


class _PipelineDrawer:
    """Batched calls of the family's diffusers pipeline (SD1.x/2.x, SDXL, SD3), one generator per image."""

    def __init__(self, settings: EvaluationSettings) -> None:
        from renegx.models import family_of

        self.settings = settings
        self.family = family_of(settings.model, settings.model_config)
        self.backbone = self.family.load_backbone(
            settings.model, clip_skip=settings.clip_skip, config=settings.model_config
        )
        pipe = self.backbone.pipeline().to(resolve_device(settings.device))
        if settings.dtype != "float32":
            pipe = pipe.to(dtype=getattr(torch, settings.dtype))
        pipe.set_progress_bar_config(disable=True)
        size = self.backbone.unet.config.sample_size * pipe.vae_scale_factor
        self.pipe, self.height, self.width = pipe, settings.height or size, settings.width or size

    def negative(self, spec: str, jobs):
        from renegx.negatives.spec import resolve_negative

        negative = resolve_negative(
            spec, self.backbone, self.settings.bank_fallback, self.settings.strict_encoder
        )
        negative.check_prompts(sorted({item.prompt for _, item in jobs}))
        return negative

    def __call__(self, label: str, negative, jobs, layout: Layout, progress) -> None:
        s = self.settings
        for start in range(0, len(jobs), s.batch_size):
            batch = jobs[start : start + s.batch_size]
            prompts = [item.prompt for _, item in batch]
            self.backbone.warn_if_truncated(prompts)
            began = time.perf_counter()
            images = self.pipe(
                prompts,
                height=self.height,
                width=self.width,
                num_inference_steps=s.steps,
                generator=[
                    torch.Generator("cpu").manual_seed(image_noise(s, seed, item)) for seed, item in batch
                ],
                clip_skip=s.clip_skip,
                **negative.pipeline_kwargs(self.pipe, prompts, s.guidance_scale),
            ).images
            seconds = (time.perf_counter() - began) / len(batch)
            for (seed, item), image in zip(batch, images, strict=True):
                record = {
                    **_sidecar(s, label, negative, seed, item),
                    "sampler": PIPELINE,
                    "scheduler": self.family.scheduler_label,
                    "num_inference_steps": s.steps,
                    "guidance_scale": s.guidance_scale if negative.guided else 1.0,
                    "clip_skip": s.clip_skip,
                    "height": self.height,
                    "width": self.width,
                    "dtype": s.dtype,
                    "seconds": round(seconds, 4),
                }
                path = layout.image(seed, label, item.group, item.index)
                write_image_with_sidecar(path, image, record, s.jpeg_quality)
                progress.update(1)


class _SamplerDrawer:
    """One image per call through `renegx.samplers` (cfg, dnp, answer, vlm, npc)."""

    def __init__(self, settings: EvaluationSettings, name: str, options: dict) -> None:
        from renegx.samplers import load_sampling_model

        self.settings, self.name, self.options = settings, name, options
        self.model = load_sampling_model(settings.model, settings.clip_skip, config=settings.model_config)
        dtype = None if settings.dtype == "float32" else getattr(torch, settings.dtype)
        self.model.to(resolve_device(settings.device), dtype)

    def negative(self, spec: str, jobs):
        from renegx.negatives.spec import resolve_negative

        negative = resolve_negative(  # checks D, L and the encoder's fingerprint
            spec, self.model, self.settings.bank_fallback, self.settings.strict_encoder
        )
        negative.check_prompts(sorted({item.prompt for _, item in jobs}))
        return negative

    def __call__(self, label: str, negative, jobs, layout: Layout, progress) -> None:
        from renegx.samplers import build_sampler
        from renegx.samplers.config import sampled_image_record
        from renegx.samplers.external import to_pil

        s = self.settings
        options = {**self.options, **({} if negative.guided else {"guidance_scale": 1.0})}
        sampler = build_sampler(self.name, self.model, options)
        for seed, item in jobs:
            result = sampler.sample(
                item.prompt, image_noise(s, seed, item), base=negative.sampler_base(item.prompt)
            )
            sidecar = {
                **_sidecar(s, label, negative, seed, item),
                **sampled_image_record(self.name, sampler, self.model, result, s.clip_skip, s.dtype),
            }
            path = layout.image(seed, label, item.group, item.index)
            write_image_with_sidecar(path, to_pil(result.image)[0], sidecar, s.jpeg_quality)
            progress.update(1)
