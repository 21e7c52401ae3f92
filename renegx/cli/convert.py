"""`renegx convert`: an official ReNeg `.bin` (a bare tensor) -> a renegx `.safetensors` that records the
model and text encoder it was trained for (`renegx.negatives.official`)."""

from __future__ import annotations

from renegx.cli.terminal import OneLineArgumentParser, run_printing_path
from renegx.negatives.embedding import convert_official
from renegx.negatives.official import OFFICIAL_MODELS


def main(argv: list[str] | None = None, prog: str = "renegx convert") -> int:
    """`renegx convert old.bin new.safetensors --base-model sd1.5`."""
    parser = OneLineArgumentParser(
        prog=prog, description="An official ReNeg .bin -> a renegx .safetensors with its provenance."
    )
    parser.add_argument("source", help="the official .bin (a bare tensor)")
    parser.add_argument("target", help="the .safetensors to write")
    parser.add_argument(
        "--base-model", required=True, help=f"one of {', '.join(OFFICIAL_MODELS)} (or its id)"
    )
    parser.add_argument(
        "--attention-mask",
        default="all",
        help="T5 models (PixArt-α): 'all' rows attended (default) or the empty prompt's mask ('empty')",
    )

    def convert():
        args = parser.parse_args(argv)
        return convert_official(args.source, args.target, args.base_model, args.attention_mask)

    return run_printing_path(convert)
