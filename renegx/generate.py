"""The inference job: prompts × seeds → PNGs with JSON sidecars, under a chosen negative.

Negatives (`--negative`):
  none           no CFG at all (guidance scale 1, prompt only)
  null           CFG against the empty prompt `E("")` (diffusers' default)
  text:<words>   CFG against a handcrafted negative prompt
  <file>         a learned embedding (`.safetensors` written by renegx, or an official ReNeg `.bin`)
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from renegx.backbone import Backbone, load_backbone
from renegx.data import read_prompts
from renegx.embedding import NegativeEmbedding
from renegx.errors import RenegxError
from renegx.files import atomic_path, atomic_write_json, ensure_writable_dir


class InferenceError(RenegxError):
    pass


@dataclass
class Negative:
    """How one `--negative` choice enters a diffusers pipeline call."""

    spec: str
    kind: str  # none | null | text | embedding
    text: str | None = None
    embedding: NegativeEmbedding | None = None
    info: dict = field(default_factory=dict)

    def pipeline_kwargs(self, pipe, batch_size: int, guidance_scale: float) -> dict:
        if self.kind == "none":
            return {"guidance_scale": 1.0}
        kwargs: dict = {"guidance_scale": guidance_scale}
        if self.kind == "text":
            kwargs["negative_prompt"] = [self.text] * batch_size
        elif self.kind == "embedding":
            kwargs.update(self.embedding.for_pipeline(pipe, batch_size))
        return kwargs


def resolve_negative(spec: str, backbone: Backbone) -> Negative:
    """Parse `--negative`; an embedding file is loaded and checked against the backbone's text encoder."""
    if spec in ("none", "null"):
        return Negative(spec, spec)
    if spec.startswith("text:"):
        text = spec[len("text:") :]
        if not text.strip():
            raise InferenceError("--negative text: needs words after 'text:'")
        return Negative(spec, "text", text=text)
    embedding = NegativeEmbedding.load(spec, hidden_size=backbone.hidden_size, seq_len=backbone.max_length)
    info = {"path": str(Path(spec).resolve()), "metadata": dict(sorted(embedding.metadata.items()))}
    return Negative(spec, "embedding", embedding=embedding, info=info)


def parse_infer_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="infer.py",
        description="Generate images with a learned negative embedding (or a baseline negative).",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="tiny", help="'tiny', a local diffusers folder, or a hub id")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for several)")
    parser.add_argument("--prompts", help="a prompt file (.txt, .json, .jsonl, .tsv)")
    parser.add_argument("--negative", default="null", help="none | null | text:<words> | <embedding file>")
    parser.add_argument(
        "--seeds", default="0", help="comma-separated seeds; every prompt is drawn once per seed"
    )
    parser.add_argument("--steps", type=int, default=30, help="DDIM steps")
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--height", type=int, help="default: the model's native size")
    parser.add_argument("--width", type=int, help="default: the model's native size")
    parser.add_argument("--clip-skip", type=int)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--out", required=True, help="output folder for PNGs and JSON sidecars")
    return parser.parse_args(argv)


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as err:
        raise InferenceError(f"--seeds must be comma-separated integers, got '{text}'") from err
    if not seeds:
        raise InferenceError("--seeds is empty")
    return seeds


def _prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt) + (read_prompts(args.prompts) if args.prompts else [])
    if not prompts:
        raise InferenceError("no prompts: pass --prompt TEXT or --prompts FILE")
    return prompts


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def generate_from_args(args: argparse.Namespace) -> list[Path]:
    """Run the inference job; returns the written PNG paths."""
    if args.steps < 1:
        raise InferenceError(f"--steps must be >= 1, got {args.steps}")
    if args.batch_size < 1:
        raise InferenceError(f"--batch-size must be >= 1, got {args.batch_size}")
    prompts, seeds = _prompts(args), _seeds(args.seeds)
    out = ensure_writable_dir(args.out)
    backbone = load_backbone(args.model, clip_skip=args.clip_skip)
    negative = resolve_negative(args.negative, backbone)
    pipe = backbone.pipeline().to(_device(args.device))
    if args.dtype != "float32":
        pipe = pipe.to(dtype=getattr(torch, args.dtype))
    pipe.set_progress_bar_config(disable=True)
    size = backbone.unet.config.sample_size * pipe.vae_scale_factor
    height, width = args.height or size, args.width or size

    jobs = [(prompt, seed) for prompt in prompts for seed in seeds]
    written = []
    batches = range(0, len(jobs), args.batch_size)
    for start in tqdm(batches, desc="generating", unit="batch"):
        batch = jobs[start : start + args.batch_size]
        batch_prompts = [p for p, _ in batch]
        generators = [torch.Generator("cpu").manual_seed(s) for _, s in batch]
        began = time.perf_counter()
        images = pipe(
            batch_prompts,
            height=height,
            width=width,
            num_inference_steps=args.steps,
            generator=generators,
            clip_skip=args.clip_skip,
            **negative.pipeline_kwargs(pipe, len(batch), args.guidance_scale),
        ).images
        seconds = (time.perf_counter() - began) / len(batch)
        for offset, ((prompt, seed), image) in enumerate(zip(batch, images, strict=True)):
            path = out / f"{start + offset:05d}.png"
            with atomic_path(path) as tmp:
                image.save(tmp, format="PNG")
            atomic_write_json(
                path.with_suffix(".json"),
                {
                    "image": path.name,
                    "prompt": prompt,
                    "seed": seed,
                    "model": args.model,
                    "negative": {"spec": negative.spec, "kind": negative.kind, **negative.info},
                    "sampler": "cfg",
                    "scheduler": "DDIM",
                    "num_inference_steps": args.steps,
                    "guidance_scale": 1.0 if negative.kind == "none" else args.guidance_scale,
                    "clip_skip": args.clip_skip,
                    "height": height,
                    "width": width,
                    "dtype": args.dtype,
                    "seconds": round(seconds, 4),
                },
            )
            written.append(path)
    print(f"renegx: wrote {len(written)} images to {out}")
    return written
