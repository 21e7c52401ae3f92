"""`renegx invert`: an output-space negative -> N token vectors whose encoding approaches it, saved as the
textual-inversion files interfaces load (`renegx.negatives.textual_inversion.invert_negative`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from renegx.cli.terminal import OneLineArgumentParser, run_reporting_errors
from renegx.files import atomic_write_text
from renegx.models import load_backbone
from renegx.negatives.embedding import EmbeddingError, NegativeEmbedding
from renegx.negatives.textual_inversion import (
    TextualInversion,
    encode_vectors,
    interface_metadata,
    invert_negative,
)


def main(argv: list[str] | None = None, prog: str = "renegx invert") -> int:
    """`renegx invert negative.safetensors --tokens 8 --out inverted.safetensors`."""
    parser = OneLineArgumentParser(
        prog=prog,
        description="Fit N input-token vectors to an output-space negative; save them as textual inversions.",
    )
    parser.add_argument("negative", help="a renegx global negative (.safetensors)")
    parser.add_argument("--tokens", type=int, required=True, help="N, the token vectors to fit")
    parser.add_argument(
        "--out", required=True, help="NAME.safetensors: the inverted negative; NAME_ti.safetensors beside it"
    )
    parser.add_argument(
        "--model", help="the model whose encoder(s) to invert (default: the file's base_model)"
    )
    parser.add_argument("--steps", type=int, default=400, help="Adam steps (default 400)")
    parser.add_argument("--lr", type=float, default=5e-3, help="Adam's rate, cosine-decayed (default 5e-3)")

    def invert():
        args = parser.parse_args(argv)
        out = Path(args.out)
        if out.suffix != ".safetensors":
            raise EmbeddingError(f"--out must name a .safetensors file, got {out}")
        if args.steps < 1:
            raise EmbeddingError(f"--steps must be >= 1, got {args.steps}")
        source = NegativeEmbedding.load(args.negative)
        if source.kind != "global":
            raise EmbeddingError(f"{args.negative} is a bank; renegx invert takes a global negative")
        model = args.model or source.metadata.get("base_model")
        if not model:
            raise EmbeddingError(f"{args.negative} records no base_model: name one with --model")
        backbone = load_backbone(model)
        source.check_compatible(backbone.hidden_size, backbone.sequence_length, f"model '{model}'")
        target = backbone.negative_conditioning(source.embeds, source.pooled)
        inversion = invert_negative(backbone, target, args.tokens, args.steps, args.lr)
        summary = inversion.summary()
        metadata = {
            **source.metadata,
            "inverted_from": Path(args.negative).name,
            "trained_in": "tokens",
            "num_tokens": str(args.tokens),
            **{f"inversion_{key}": f"{value:.6g}" for key, value in summary.items()},
        }
        with torch.no_grad():
            embeds, pooled = backbone.negative_parts(encode_vectors(backbone, inversion.vectors))
        NegativeEmbedding(embeds.float(), pooled=pooled, metadata=metadata).save(out)
        written = TextualInversion(inversion.vectors, out.stem, metadata=interface_metadata(metadata))
        paths = [out, *written.save_beside(out)]
        report = {
            **summary,
            "row_mse": inversion.row_error.tolist(),
            "target_row_power": inversion.target_power.tolist(),
        }
        atomic_write_text(out.with_name(f"{out.stem}_inversion.json"), json.dumps(report, indent=1) + "\n")
        rows = len(inversion.row_error) - 1
        print(
            f"rows 1-{rows} (reached by the tokens): mean squared error {summary['reachable_rows_mse']:.4g}, "
            f"{summary['reachable_rows_relative']:.2%} of the target's power; worst row "
            f"{summary['worst_row']} ({summary['worst_row_mse']:.4g})"
        )
        print(
            f"row 0 (the start token's, reached by no token): squared error {summary['row0_mse']:.4g}, "
            f"{summary['row0_share_of_error']:.2%} of what remains"
        )
        for path in paths:
            print(path)

    return run_reporting_errors(invert)
