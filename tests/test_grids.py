"""Labelled grids: pictures land in their cells, labels in the margins, bad inputs fail in one line."""

import numpy as np
import pytest
import torch
from PIL import Image

from renegx.errors import RenegxError
from renegx.evaluate.grids import labelled_grid, prompt_seed_label, save_labelled_grid


def _solid(colour, count=2, size=8):
    return torch.tensor(colour, dtype=torch.float32).view(1, 3, 1, 1).expand(count, 3, size, size).clone()


def test_grid_places_pictures_and_writes_labels(tmp_path):
    rows = [_solid([1.0, 0.0, 0.0]), _solid([0.0, 0.0, 1.0])]
    columns = [
        prompt_seed_label("a red circle on a very long and winding road", 0),
        prompt_seed_label("x", 1),
    ]
    path = save_labelled_grid(rows, ["null", "learned"], columns, tmp_path / "grid.png", scale=4)
    with Image.open(path) as image:
        grid = np.asarray(image.convert("RGB"))
    picture = labelled_grid(rows, ["null", "learned"], columns, scale=4)
    assert grid.shape == np.asarray(picture).shape
    height, width = grid.shape[:2]
    # Two rows of 32-px cells under a header, two columns right of a label margin.
    assert height > 2 * 32 and width > 2 * 32
    bottom_right = grid[height - 2 - 16, width - 2 - 16]
    assert tuple(bottom_right) == (0, 0, 255)
    top_right = grid[height - 2 - 32 - 2 - 16, width - 2 - 16]
    assert tuple(top_right) == (255, 0, 0)
    # The margins carry text: dark pixels left of the pictures and above them.
    assert (grid[:, : width - 2 * 34, :] < 128).any()
    assert (grid[: height - 2 * 34, :, :] < 128).any()
    assert not list(tmp_path.glob(".*tmp*"))


def test_grid_errors_are_one_line():
    rows = [_solid([1.0, 0.0, 0.0])]
    for call in (
        lambda: labelled_grid(rows, ["a", "b"], ["c", "d"]),
        lambda: labelled_grid(rows, ["a"], ["c"]),
        lambda: labelled_grid(rows + [_solid([0.0, 0.0, 0.0], count=3)], ["a", "b"], ["c", "d"]),
        lambda: labelled_grid(rows, ["a"], ["c", "d"], scale=0),
    ):
        with pytest.raises(RenegxError) as error:
            call()
        assert "\n" not in str(error.value)
