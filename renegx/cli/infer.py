"""The inference job: prompts × seeds → PNGs with JSON sidecars, under a chosen negative.

Negatives (`--negative`):
  none           no CFG at all (guidance scale 1, prompt only)
  null           CFG against the empty prompt `E("")` (diffusers' default)
  text:<words>   CFG against a handcrafted negative prompt
  ti:<file>      a textual-inversion embedding (A1111 `.pt`/`.safetensors`, diffusers `learned_embeds`, an
                 SDXL clip_l/clip_g pair) run through the text encoder, as a negative prompt naming it is
  <file>         a learned embedding (`.safetensors` written by renegx, or an official ReNeg `.bin`)
  <bank file>    a bank from `train.py per-prompt`: each prompt gets its own row; a prompt not in the bank
                 gets the bank's global row (`--bank-fallback global`) or stops the run (`error`)

Samplers (`--sampler`; without it, diffusers' StableDiffusionPipeline draws batched CFG): one image per
prompt × seed through renegx's guidance composer, the `--negative` above as base negative; the sidecar adds
`nfe`, the negatives used per step, external-model calls and wall time. Options come from `--steps`,
`--guidance-scale`, `--height`, `--width`, then `--sampler-config FILE.yaml` (a flat mapping, `sampler:` +
options), then `--sampler-opt KEY=VALUE` (YAML values), the later winning. `answer` is a RECONSTRUCTION of
unpublished equations (switches `neg_form`, `neg_signal`). Each sampler's own options and defaults:
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm.auto import tqdm

from renegx.cli.terminal import (
    add_device,
    add_negative_options,
    add_sampling_options,
    add_seeds,
    count,
    job_parser,
    parse_job_args,
    parse_seeds,
    run_reporting_errors,
    set_threads,
    with_config_files,
)
from renegx.files import removed_if_left_empty, write_image_with_sidecar
from renegx.models import family_of
from renegx.models.loading import resolve_device
from renegx.negatives.embedding import EmbeddingError
from renegx.negatives.spec import (
    InferenceError,
    check_negative_file,
    drawn_as_recorded,
    recorded_metadata,
    resolve_negative,
)
from renegx.prompts import read_prompts

RANDOM_MODEL = "tiny"  # the model drawn with when neither --model nor the negative file names one


def infer_parser(prog: str = "infer.py"):
    parser = job_parser(
        prog,
        "Generate images with a learned negative embedding (or a baseline negative).",
        epilog=__doc__.split("\n\n", 1)[1] + _sampler_options_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_sampling_options(parser)
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for several)")
    parser.add_argument("--prompts", help="a prompt file (.txt, .json, .jsonl, .tsv)")
    add_negative_options(parser, many=False)
    add_seeds(parser)
    add_device(parser)
    parser.add_argument("--out", required=True, help="output folder for PNGs and JSON sidecars")
    return parser


def parse_infer_args(argv: list[str] | None = None, prog: str = "infer.py") -> argparse.Namespace:
    """The options of an inference run; `--model` defaults to the base model the --negative file records,
    else 'tiny'."""
    return parse_job_args(infer_parser(prog), argv)


def _prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt) + (read_prompts(args.prompts) if args.prompts else [])
    if not prompts:
        raise InferenceError("no prompts: pass --prompt TEXT or --prompts FILE")
    return prompts


def recorded_base_model(spec: str) -> str | None:
    """The `base_model` a negative file records in its metadata; None for other negatives."""
    return recorded_metadata(spec).get("base_model")


@contextmanager
def naming_the_base_model(spec: str, model: Callable[[], str], fix: str) -> Iterator[None]:
    """An embedding that does not fit the run's model (`model()`, asked only then) is reported with the base
    model the file records and `fix` (in which `{base}` names that model)."""
    try:
        yield
    except EmbeddingError as err:
        base = recorded_base_model(spec)
        used = model() if base is not None else None
        if base is None or base == used:
            raise
        raise EmbeddingError(
            f"{err}; it was trained on '{base}', this run uses '{used}': {fix.format(base=base)}"
        ) from None


def generate_from_args(args: argparse.Namespace) -> list[Path]:
    """Run the inference job; returns the written PNG paths (named by `image_jobs`). Everything that needs no
    model is checked before one loads; folders created for a run that fails before its first image are removed
    again."""
    set_threads(args.threads)
    random_weights = args.model is None and recorded_base_model(args.negative) is None
    if args.model is None:
        args.model = recorded_base_model(args.negative) or RANDOM_MODEL
    args.steps, args.guidance_scale = drawn_as_recorded([args.negative], args.steps, args.guidance_scale)
    if args.steps < 1:
        raise InferenceError(f"--steps must be >= 1, got {args.steps}")
    if args.batch_size < 1:
        raise InferenceError(f"--batch-size must be >= 1, got {args.batch_size}")
    prompts, seeds = _prompts(args), parse_seeds(args.seeds, error=InferenceError)
    check_negative_file(args.negative)
    jobs, run = image_jobs(Path(args.out), prompts, seeds)
    with removed_if_left_empty(args.out) as out:
        if random_weights:
            print(
                f"renegx: no --model and no negative file naming one: drawing with '{RANDOM_MODEL}', random "
                "weights (--model toy draws the toy world)",
                file=sys.stderr,
            )
        if args.sampler or args.sampler_config or args.sampler_opt:
            written = _generate_with_sampler(args, prompts, jobs, out)
        else:
            written = _generate_with_pipeline(args, prompts, jobs, out)
    after = f" (named *_run{run}.png: {out} holds images of an earlier run)" if run > 1 else ""
    print(f"renegx: wrote {count(len(written), 'image')} to {out}{after}")
    return written


def image_name(prompt_index: int, seed: int, run: int = 1) -> str:
    """`0003_seed42.png`: the prompt's index in the run's prompt list (from 0) and the seed it was drawn with;
    `0003_seed42_run2.png` for the second run whose names would clash in the same folder."""
    return f"{prompt_index:04d}_seed{seed}{f'_run{run}' if run > 1 else ''}.png"


def image_jobs(out: Path, prompts: list[str], seeds: list[int]) -> tuple[list[tuple[str, str, int]], int]:
    """`(file name, prompt, seed)` per image, prompts × seeds, and the run number in the names: the first
    run number (1, 2, ...) for which no name (nor its sidecar) is in `out`, so nothing is overwritten."""
    for run in itertools.count(1):
        jobs = [(image_name(i, s, run), prompt, s) for i, prompt in enumerate(prompts) for s in seeds]
        taken = (out / name for name, _, _ in jobs)
        if not any(path.exists() or path.with_suffix(".json").exists() for path in taken):
            return jobs, run
    raise AssertionError("unreachable")


def _generate_with_pipeline(
    args: argparse.Namespace, prompts: list[str], jobs: list[tuple[str, str, int]], out: Path
) -> list[Path]:
    """Without `--sampler`: the diffusers pipeline draws batched CFG."""
    family = family_of(args.model, args.model_config)
    backbone = family.load_backbone(args.model, clip_skip=args.clip_skip, config=args.model_config)
    with _naming_the_base_model(args):
        negative = resolve_negative(args.negative, backbone, args.bank_fallback, args.strict_encoder)
    negative.check_prompts(prompts)
    pipe = backbone.pipeline().to(resolve_device(args.device))
    if args.dtype != "float32":
        pipe = pipe.to(dtype=getattr(torch, args.dtype))
    pipe.set_progress_bar_config(disable=True)
    size = backbone.unet.config.sample_size * pipe.vae_scale_factor
    height, width = args.height or size, args.width or size

    written = []
    batches = range(0, len(jobs), args.batch_size)
    for start in tqdm(batches, desc="generating", unit="batch"):
        batch = jobs[start : start + args.batch_size]
        batch_prompts = [p for _, p, _ in batch]
        backbone.warn_if_truncated(batch_prompts)
        generators = [torch.Generator("cpu").manual_seed(s) for _, _, s in batch]
        began = time.perf_counter()
        images = pipe(
            batch_prompts,
            height=height,
            width=width,
            num_inference_steps=args.steps,
            generator=generators,
            clip_skip=args.clip_skip,
            **negative.pipeline_kwargs(pipe, batch_prompts, args.guidance_scale),
        ).images
        seconds = (time.perf_counter() - began) / len(batch)
        for (name, prompt, seed), image in zip(batch, images, strict=True):
            path = write_image_with_sidecar(
                out / name,
                image,
                {
                    "prompt": prompt,
                    "seed": seed,
                    "model": args.model,
                    "negative": negative.sidecar(prompt),
                    "sampler": "cfg",
                    "scheduler": family.scheduler_label,
                    "num_inference_steps": args.steps,
                    "guidance_scale": args.guidance_scale if negative.guided else 1.0,
                    "clip_skip": args.clip_skip,
                    "height": height,
                    "width": width,
                    "dtype": args.dtype,
                    "seconds": round(seconds, 4),
                },
            )
            written.append(path)
    return written


def _naming_the_base_model(args: argparse.Namespace):
    return naming_the_base_model(
        args.negative, lambda: args.model, "pass --model {base} (or leave --model out)"
    )


def _sampler_options_help() -> str:
    from renegx.samplers import describe_options

    return describe_options() + "\n"


def _generate_with_sampler(
    args: argparse.Namespace, prompts: list[str], jobs: list[tuple[str, str, int]], out: Path
) -> list[Path]:
    """`--sampler`: one image per prompt × seed through `renegx.samplers`, each with its full record."""
    from renegx.samplers import build_sampler, load_sampling_model
    from renegx.samplers.config import load_sampler_config, parse_overrides, sampled_image_record
    from renegx.samplers.external import to_pil

    name, options = load_sampler_config(args.sampler_config) if args.sampler_config else (None, {})
    name = args.sampler or name or "cfg"
    common = {"steps": args.steps, "guidance_scale": args.guidance_scale}
    common.update({k: v for k, v in (("height", args.height), ("width", args.width)) if v is not None})
    options = {**common, **options, **parse_overrides(args.sampler_opt)}
    model = load_sampling_model(args.model, clip_skip=args.clip_skip, config=args.model_config)
    model.to(resolve_device(args.device), None if args.dtype == "float32" else getattr(torch, args.dtype))
    with _naming_the_base_model(args):  # checks D and L against the model
        negative = resolve_negative(args.negative, model, args.bank_fallback, args.strict_encoder)
    negative.check_prompts(prompts)
    if not negative.guided:
        options["guidance_scale"] = 1.0
    sampler = build_sampler(name, model, options)
    written = []
    for file_name, prompt, seed in tqdm(jobs, desc=f"sampling ({name})", unit="image"):
        result = sampler.sample(prompt, seed, base=negative.sampler_base(prompt))
        path = write_image_with_sidecar(
            out / file_name,
            to_pil(result.image)[0],
            {
                "prompt": prompt,
                "seed": seed,
                "model": args.model,
                "negative": negative.sidecar(prompt),
                **sampled_image_record(name, sampler, model, result, args.clip_skip, args.dtype),
            },
        )
        written.append(path)
    return written


def main(argv: list[str] | None = None, prog: str = "renegx infer") -> int:
    """The inference job; a bad input becomes one line on stderr and exit code 2."""

    def job() -> None:
        args = None if argv is None else with_config_files(argv, "samplers")
        generate_from_args(parse_infer_args(args, prog))

    return run_reporting_errors(job, on_interrupt="the images written so far are kept")
