"""Labelled picture grids: one row per negative, one column per prompt and seed, names written on the picture.

A grid that says which row is null and which is learned explains itself without the terminal text beside it.
Labels use Pillow's bundled default font (nothing downloaded); a label too long for its cell is shortened with
"..." so the grid's size depends only on the pictures.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from renegx.errors import RenegxError
from renegx.files import atomic_path

GAP = 2  # pixels between cells
PAD = 4  # pixels around a label
ROW_LABEL_WIDTH = 160  # at most; narrower when every row label fits in less


def _fit(draw: ImageDraw.ImageDraw, font, text: str, width: int) -> str:
    """`text` cut to fit `width` pixels, ending in "..." when it was cut."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text.rstrip() + "..."


def labelled_grid(
    rows: list[torch.Tensor], row_labels: list[str], column_labels: list[str], scale: int = 4
) -> Image.Image:
    """A grid of pictures with its labels: `rows[r]` is a `(N, 3, H, W)` tensor in [0, 1] drawn as row r.

    `row_labels[r]` is written left of row r, `column_labels[c]` above column c (in both a `\\n` starts a new
    line, e.g. a shortened prompt over its seed). Pictures are enlarged `scale` times (nearest neighbour).
    """
    if not rows or len(row_labels) != len(rows):
        raise RenegxError(
            f"a grid needs one label per row: got {len(rows)} rows and {len(row_labels)} labels"
        )
    shape = tuple(rows[0].shape)
    if any(tuple(row.shape) != shape for row in rows) or len(shape) != 4 or shape[1] != 3:
        shapes = ", ".join(str(tuple(row.shape)) for row in rows)
        raise RenegxError(f"grid rows must all be (N, 3, H, W) tensors of one shape, got {shapes}")
    if len(column_labels) != shape[0]:
        raise RenegxError(
            f"a grid needs one label per column: got {shape[0]} columns and {len(column_labels)} labels"
        )
    if scale < 1:
        raise RenegxError(f"grid scale must be >= 1, got {scale}")
    count, height, width = shape[0], shape[2] * scale, shape[3] * scale
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_height = measure.textbbox((0, 0), "Ag", font=font)[3] + 2
    widest = max(
        int(measure.textlength(line, font=font)) for label in row_labels for line in label.split("\n")
    )
    label_width = min(ROW_LABEL_WIDTH, widest + 2 * PAD)
    header = max((label.count("\n") + 1 for label in column_labels), default=0) * line_height + 2 * PAD
    canvas = Image.new(
        "RGB", (label_width + count * (width + GAP), header + len(rows) * (height + GAP)), "white"
    )
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(column_labels):
        for line_number, line in enumerate(label.split("\n")):
            text = _fit(draw, font, line, width - PAD)
            draw.text(
                (label_width + c * (width + GAP), PAD + line_number * line_height),
                text,
                fill="black",
                font=font,
            )
    for r, (row, label) in enumerate(zip(rows, row_labels, strict=True)):
        top = header + r * (height + GAP)
        lines = label.split("\n")
        first = top + (height - len(lines) * line_height) // 2
        for line_number, line in enumerate(lines):
            text = _fit(draw, font, line, label_width - 2 * PAD)
            draw.text((PAD, first + line_number * line_height), text, fill="black", font=font)
        pixels = (
            (row.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        )
        for c, image in enumerate(pixels):
            picture = Image.fromarray(image).resize((width, height), Image.Resampling.NEAREST)
            canvas.paste(picture, (label_width + c * (width + GAP), top))
    return canvas


def save_labelled_grid(
    rows: list[torch.Tensor], row_labels: list[str], column_labels: list[str], path: Path, scale: int = 4
) -> Path:
    """Draw `labelled_grid(...)` and write it atomically as a PNG at `path`; returns `path`."""
    grid = labelled_grid(rows, row_labels, column_labels, scale)
    path = Path(path)
    with atomic_path(path) as temporary:
        grid.save(temporary, format="PNG")
    return path


def prompt_seed_label(prompt: str, seed: int) -> str:
    """A column label: the prompt (shortened to fit by the grid) over its seed."""
    return f"{prompt}\nseed {seed}"
