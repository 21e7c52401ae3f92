"""The toy world's community-style negative (`renegx.toyworld.ti_defects`) measured against null, the
handcrafted negative prompt and, with `--learned`, a ReNeg embedding.

    python -m experiments.textual_inversion_toy --learned runs/default/version_0/negative.safetensors

The negatives are drawn on the toy world's held-out prompts × the held-out seeds with the same noise, the TI
negative (`ti:FILE`) encoded as A1111 encodes a negative prompt that names it, scored by both toy judges;
differences to null are paired with bootstrap 95% intervals that resample prompts. Where
`renegx.toyworld.truth` is present, the ground truth (analytic defect meters, attribute classifier) is
reported too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from renegx.files import atomic_write_json
from renegx.negatives.textual_inversion import TextualInversion
from renegx.toyworld.ti_defects import SHIPPED

JUDGES = ("toy-pref", "toy-independent")


def measure(ti_path: Path, learned: str | None, seeds: list[int], limit: int | None) -> dict:
    """Both judges (and the ground truth where available) for null, handcrafted, TI and learned."""
    from renegx.evaluate.held_out import draw_and_judge
    from renegx.evaluate.protocol import mean_delta
    from renegx.negatives.embedding import NegativeEmbedding
    from renegx.rewards import ToyPreference
    from renegx.toyworld import heldout_prompts
    from renegx.toyworld.scene import HANDCRAFTED_NEGATIVE
    from renegx.train.module import ReNegModule

    # The default run's sampling settings (renegx/configs/train/default.yaml): DDIM 20, w = 7.5.
    module = ReNegModule(reward=ToyPreference(), model="toy", num_inference_steps=20, stop_steps=7)
    backbone = module.backbone
    negatives = {
        "null": module.null_embeds,
        "handcrafted": backbone.encode_prompts([HANDCRAFTED_NEGATIVE]),
        "ti": TextualInversion.load(ti_path).negative(backbone).embeds,
    }
    if learned:
        negatives["learned"] = NegativeEmbedding.load(learned, hidden_size=backbone.hidden_size).embeds
    prompts = heldout_prompts()[:limit]
    pictures, scores, prompt_ids = draw_and_judge(module, negatives, prompts, seeds, JUDGES)
    summary = {"prompts": len(prompts), "seeds": seeds, "ti": str(ti_path), "learned": learned, "judges": {}}
    for judge, by_negative in scores.items():
        row = {name: float(values.mean()) for name, values in by_negative.items()}
        names = list(negatives)
        for later, name in enumerate(names):  # each negative against every one listed before it
            for other in names[:later]:
                delta = mean_delta(by_negative[name], by_negative[other], clusters=prompt_ids)
                row[f"{name}_minus_{other}"] = [delta.value, delta.low, delta.high]
        summary["judges"][judge] = row
    try:
        from renegx.toyworld.truth import format_truth_table, load_reader, meter_floor, truth_table
    except ImportError:
        summary["truth"] = None  # the ground-truth module is not in this tree
    else:
        read = load_reader()
        texts = [p for p in prompts for _ in seeds]
        readings = {name: read(images, texts) for name, images in pictures.items()}
        summary["truth"] = truth_table(readings, prompt_ids, baseline="null")
        summary["truth_text"] = format_truth_table(summary["truth"], meter_floor())
        if learned:  # the comparison community negatives are up against: TI vs ReNeg
            versus_ti = truth_table({k: readings[k] for k in ("ti", "learned")}, prompt_ids, baseline="ti")
            summary["truth_learned_minus_ti"] = versus_ti["learned"]
            summary["truth_text"] += "\n" + format_truth_table(versus_ti, baseline="ti").splitlines()[-1]
    return summary


def format_judges(summary: dict) -> str:
    lines = []
    for judge, row in summary["judges"].items():
        lines.append(judge + ": " + "  ".join(f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float)))
        for key, (value, low, high) in ((k, v) for k, v in row.items() if isinstance(v, list)):
            lines.append(f"    {key:<26}{value:+.4f} [{low:+.4f}, {high:+.4f}]")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.textual_inversion_toy", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--ti", default=str(SHIPPED), help="the TI file to measure (default: the shipped one)"
    )
    parser.add_argument("--learned", help="a ReNeg embedding for the toy model to compare as well")
    parser.add_argument("--seeds", default="100000,100001", help="the held-out seeds (the default run's)")
    parser.add_argument("--prompts", type=int, help="only the first N held-out prompts (default: all 64)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/textual_inversion_toy", help="folder for summary.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    summary = measure(Path(args.ti), args.learned, [int(s) for s in args.seeds.split(",")], args.prompts)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.out) / "summary.json", summary)
    seeds = len(summary["seeds"])
    print(f"\n{summary['prompts']} held-out prompts × {seeds} seeds, the same noise for every negative")
    print(format_judges(summary))
    print(summary.get("truth_text") or "ground truth: renegx.toyworld.truth is not in this tree; judges only")


if __name__ == "__main__":
    main()
