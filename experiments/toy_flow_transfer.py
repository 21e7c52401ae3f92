"""Transfer between the toy world's UNet (`toy`) and its flow-matching transformer (`toy-flow`), which
share the frozen toy text encoder: each model's own learned negative beside the other's, carried over, on the
same noise.

    python -m experiments.toy_flow_transfer --toy runs/default/version_0/negative.safetensors \
        --flow runs/toy_flow/version_0/negative.safetensors

The two read different layers of that encoder: `toy` its last hidden state `(77, 64)`, `toy-flow` (SD3's
convention) the penultimate one, placed in both CLIP slots `(77, 64 + 64)`, with a pooled vector. Carried
over is therefore a copy of rows between layers, stated here: toy → flow puts the toy rows in both slots with
the flow model's own null pooled vector; flow → toy takes the first (CLIP-L) slot. Each direction draws on
the receiving model at its own config's settings (toy: w 7.5; toy-flow: w 5; DDIM/Euler 20 steps, the
negative from half way), ground truth and both judges, paired cluster-bootstrap 95% intervals (prompts
resampled) against null and against the receiving model's own negative ("output").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from experiments.token_negatives import paired_table, print_table
from renegx.files import atomic_write_json

SETTINGS = {"toy": {"guidance_scale": 7.5}, "toy-flow": {"guidance_scale": 5.0}}


def _module(model: str):
    from renegx.rewards import ToyPreference
    from renegx.train.module import ReNegModule

    return ReNegModule(
        reward=ToyPreference(),
        model=model,
        num_inference_steps=20,
        stop_steps=7,
        negative_from=0.5,
        **SETTINGS[model],
    )


def toy_to_flow(flow_backbone, toy_rows: torch.Tensor, flow_null: torch.Tensor) -> torch.Tensor:
    """The toy UNet's rows `(1, 77, 64)` in both CLIP slots, with the flow model's null pooled vector."""
    _, pooled = flow_backbone.negative_parts(flow_null)
    return flow_backbone.negative_conditioning(torch.cat([toy_rows, toy_rows], dim=-1), pooled)


def flow_to_toy(flow_backbone, flow_negative: torch.Tensor, width: int) -> torch.Tensor:
    """The flow model's CLIP-L slot `(1, 77, width)` of its packed negative."""
    embeds, _ = flow_backbone.negative_parts(flow_negative)
    return embeds[..., :width].contiguous()


def measure(toy_file: str, flow_file: str, prompts: list[str], seeds: list[int]) -> dict:
    from renegx.negatives.spec import resolve_negative

    toy, flow = _module("toy"), _module("toy-flow")
    toy_own = resolve_negative(toy_file, toy.backbone).embedding.embeds
    flow_own = resolve_negative(flow_file, flow.backbone).embedding
    flow_packed = flow.backbone.negative_conditioning(flow_own.embeds, flow_own.pooled)
    on_flow = {
        "null": flow.null_embeds,
        "output": flow_packed,
        "from-toy": toy_to_flow(flow.backbone, toy_own, flow.null_embeds),
    }
    on_toy = {
        "null": toy.null_embeds,
        "output": toy_own,
        "from-flow": flow_to_toy(flow.backbone, flow_packed, toy_own.shape[-1]),
    }
    return {
        "prompts": len(prompts),
        "seeds": seeds,
        "files": {"toy": toy_file, "toy-flow": flow_file},
        "on_toy_flow": paired_table(flow, on_flow, prompts, seeds),
        "on_toy": paired_table(toy, on_toy, prompts, seeds),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.toy_flow_transfer", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--toy", required=True, help="the toy UNet's learned negative (negative.safetensors)")
    parser.add_argument("--flow", required=True, help="toy-flow's learned negative (negative.safetensors)")
    parser.add_argument("--seeds", default="100000,100001,100002,100003")
    parser.add_argument("--prompts", type=int, default=64, help="the first N prompts of the split")
    parser.add_argument(
        "--split", default="heldout", help="heldout, or a novel-phrasing set: novel, reworded"
    )
    parser.add_argument("--out", default="runs/toy_flow_transfer")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from renegx.toyworld.splits import prompts_of_split

    seeds = [int(s) for s in args.seeds.split(",")]
    summary = measure(args.toy, args.flow, prompts_of_split(args.split, args.prompts), seeds)
    summary["split"] = args.split
    Path(args.out).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.out) / "summary.json", summary)
    print(f"{summary['prompts']} {args.split} prompts × {len(seeds)} seeds, the same noise throughout")
    for where in ("on_toy_flow", "on_toy"):
        print(f"\n== {where.removeprefix('on_')} (output: its own learned negative)")
        print_table(summary[where])
    print(json.dumps({"out": str(Path(args.out) / "summary.json")}))


if __name__ == "__main__":
    main()
