"""Output-space against token-space negatives in the toy world, each drawn late (from `negative_from`, as
trained) and from the first step (as every interface draws a textual inversion), and CPU per training step.

    python -m experiments.token_negatives --output runs/output/version_0/negative.safetensors \
        --tokens tokens8=ti:runs/tokens8/version_0/negative_ti.safetensors \
        --inverted ti:inverted_ti.safetensors

Every negative draws the held-out prompts × `--seeds` from the same noise as null; the ground truth
(defective share by kind, adherence) and both toy judges are read, with paired cluster-bootstrap 95%
intervals (prompts resampled) against null and against the output-space negative; beside them the
output-space negative with its row 0 (the start token's, which no token reaches) set back to the null's.
Negatives are given as `--negative` takes them (`ti:FILE`: the toy encoder over a textual inversion's
vectors). `--split novel` draws a novel-phrasing set instead of the held-out prompts. `--step-seconds K` times
K training steps of each space instead (process CPU seconds, one thread, steps alternating, the same noise for
both).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from renegx.files import atomic_write_json

JUDGES = ("toy-pref", "toy-independent")
WINDOWS = {"late": 0.5, "first-step": 0.0}  # the toy default trains with negative_from 0.5


def _module(negative_from: float, **settings):
    from renegx.rewards import ToyPreference
    from renegx.train.module import ReNegModule

    # The default run's settings (renegx/configs/train/default.yaml): DDIM 20, w = 7.5, K = 7.
    return ReNegModule(
        reward=ToyPreference(),
        model="toy",
        num_inference_steps=20,
        stop_steps=7,
        negative_from=negative_from,
        **settings,
    )


def negatives_of(backbone, specs: dict[str, str]) -> dict[str, torch.Tensor]:
    """name → conditioning of each `--negative`-style spec (a renegx file; `ti:FILE` through the encoder)."""
    from renegx.negatives.spec import resolve_negative

    return {name: resolve_negative(spec, backbone).embedding.embeds for name, spec in specs.items()}


def _judge_rows(scores: dict[str, np.ndarray], prompt_ids: np.ndarray, baselines: list[str]) -> dict:
    from renegx.evaluate.protocol import mean_delta

    rows = {}
    for name, values in scores.items():
        row = {"mean": float(values.mean())}
        for base in (b for b in baselines if b != name):
            delta = mean_delta(values, scores[base], clusters=prompt_ids)
            row[f"minus_{base}"] = [delta.value, delta.low, delta.high]
        rows[name] = row
    return rows


def paired_table(module, negatives: dict[str, torch.Tensor], prompts: list[str], seeds: list[int]) -> dict:
    """`negatives` (null and "output" among them) drawn by `module` from the same noise; the ground truth
    against null and against "output", both judges' rows, and the printed tables."""
    from renegx.evaluate.held_out import draw_and_judge
    from renegx.toyworld.truth import format_truth_table, load_reader, meter_floor, truth_table

    pictures, scores, prompt_ids = draw_and_judge(module, negatives, prompts, seeds, JUDGES, 128)
    texts = [p for p in prompts for _ in seeds]
    read = load_reader()
    readings = {name: read(images, texts) for name, images in pictures.items()}
    versus_null = truth_table(readings, prompt_ids, baseline="null")
    versus_output = truth_table({k: v for k, v in readings.items() if k != "null"}, prompt_ids, "output")
    return {
        "truth_minus_null": versus_null,
        "truth_minus_output": versus_output,
        "judges": {j: _judge_rows(s, prompt_ids, ["null", "output"]) for j, s in scores.items()},
        "text": "\n".join(
            [
                format_truth_table(versus_null, meter_floor()),
                *(
                    line
                    for line in format_truth_table(versus_output, baseline="output").splitlines()
                    if " − output: " in line
                ),
            ]
        ),
    }


def print_table(result: dict) -> None:
    print(result["text"])
    for judge, rows in result["judges"].items():
        for name, row in rows.items():
            cells = "  ".join(
                f"{k} {v[0]:+.4f} [{v[1]:+.4f}, {v[2]:+.4f}]" for k, v in row.items() if isinstance(v, list)
            )
            print(f"  {judge:<16}{name:<16}{row['mean']:.4f}  {cells}")


def measure(files: dict[str, str], seeds: list[int], prompts: list[str], windows: list[str]) -> dict:
    summary = {"prompts": len(prompts), "seeds": seeds, "files": files, "windows": {}}
    for window in windows:
        module = _module(WINDOWS[window])
        negatives = {"null": module.null_embeds, **negatives_of(module.backbone, files)}
        # What no token reaches: the output-space negative with the start token's row put back to the null's.
        negatives["output-row0-null"] = negatives["output"].clone()
        negatives["output-row0-null"][:, 0] = module.null_embeds[:, 0]
        summary["windows"][window] = {
            "negative_from": WINDOWS[window],
            **paired_table(module, negatives, prompts, seeds),
        }
    return summary


def step_seconds(steps: int, num_tokens: int) -> dict:
    """Process CPU seconds per training step (forward, backward) of each space, alternating, same noise."""
    modules = {"output": _module(0.5), "tokens": _module(0.5, space="tokens", num_tokens=num_tokens)}
    prompts = ["a red circle on a blue background"] * 4
    seconds = {name: [] for name in modules}
    for step in range(steps + 1):  # the first step of each warms up and is dropped
        for name, module in modules.items():
            module._noise_generator = torch.Generator().manual_seed(step)
            began = time.process_time()
            module.training_step({"prompts": prompts, "indices": torch.arange(4)}, step).backward()
            spent = time.process_time() - began
            module.trainable.grad = None
            if step:
                seconds[name].append(spent)
    from renegx.evaluate.protocol import cluster_bootstrap

    ratio = cluster_bootstrap(np.array(seconds["tokens"]) / np.array(seconds["output"]))
    return {
        "steps": steps,
        "num_tokens": num_tokens,
        **{f"{name}_seconds": [float(np.mean(v)), float(np.std(v))] for name, v in seconds.items()},
        "tokens_over_output": [ratio.value, ratio.low, ratio.high],  # per-step ratio, bootstrap 95% CI
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.token_negatives", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--output", help="the output-space negative (negative.safetensors)")
    parser.add_argument("--tokens", action="append", default=[], help="NAME=ti:FILE, a token-space negative")
    parser.add_argument("--inverted", help="ti:FILE, the inverted output-space negative")
    parser.add_argument("--community", help="ti:FILE, a community-style TI (default: the shipped one)")
    parser.add_argument("--seeds", default="100000,100001,100002,100003")
    parser.add_argument("--prompts", type=int, default=64, help="the first N prompts of the split")
    parser.add_argument(
        "--split", default="heldout", help="heldout, or a novel-phrasing set: novel, reworded"
    )
    parser.add_argument(
        "--step-seconds", type=int, help="time this many training steps of each space instead"
    )
    parser.add_argument("--num-tokens", type=int, default=8)
    parser.add_argument("--windows", default=",".join(WINDOWS), help="late, first-step or both")
    parser.add_argument("--out", default="runs/token_negatives")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.step_seconds:
        result = step_seconds(args.step_seconds, args.num_tokens)
        atomic_write_json(Path(args.out) / "step_seconds.json", result)
        print(json.dumps(result, indent=1))
        return
    from renegx.toyworld.splits import prompts_of_split
    from renegx.toyworld.ti_defects import SHIPPED

    files = {"output": args.output, **dict(t.split("=", 1) for t in args.tokens)}
    if args.inverted:
        files["inverted"] = args.inverted
    files["community"] = args.community or f"ti:{SHIPPED}"
    seeds = [int(s) for s in args.seeds.split(",")]
    summary = measure(files, seeds, prompts_of_split(args.split, args.prompts), args.windows.split(","))
    summary["split"] = args.split
    atomic_write_json(Path(args.out) / "summary.json", summary)
    print(f"{summary['prompts']} {args.split} prompts × {len(seeds)} seeds, the same noise throughout")
    for window, result in summary["windows"].items():
        print(f"\n== {window} (negative_from {result['negative_from']})")
        print_table(result)


if __name__ == "__main__":
    main()
