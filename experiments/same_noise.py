"""Toy-world pictures of several negatives from the same noise, judged by both toy judges and read by the
ground truth (`renegx.toyworld.truth`): what the toy studies compare embeddings on."""

from __future__ import annotations

import numpy as np
import torch

from renegx.evaluate.held_out import held_out_pairs
from renegx.rewards import ToyIndependentJudge, ToyPreference
from renegx.toyworld.truth import ATTRIBUTES, DEFECT_KINDS, load_reader, truth_table

JUDGES = ("toy-pref", "toy-independent")


class Evaluation:
    """The evaluation prompts × seeds (each prompt its own noise, `noise_seed`), drawn with the same noise for
    every negative, judged and read.

    `module` is a `ReNegModule` on a toy model: its `sample_images` draws the pictures.
    """

    def __init__(self, module, prompts: list[str], seeds: list[int]):
        self.module, self.read = module, load_reader()
        self.pairs = held_out_pairs(prompts, seeds)
        self.texts = [p for p, _, _ in self.pairs]
        self.clusters = np.array([i for _, i, _ in self.pairs])
        self.judges = {"toy-pref": ToyPreference(), "toy-independent": ToyIndependentJudge()}

    @torch.no_grad()
    def draw(self, negative: torch.Tensor) -> torch.Tensor:
        """`(len(pairs), 3, H, W)` pictures in [0, 1], 64 at a time."""
        chunks = [self.pairs[k : k + 64] for k in range(0, len(self.pairs), 64)]
        return torch.cat(
            [
                self.module.sample_images([p for p, _, _ in c], negative, [s for _, _, s in c]).float()
                for c in chunks
            ]
        )

    @torch.no_grad()
    def measure(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        """Per picture: the ground truth's readings and both judges' scores."""
        readings = self.read(images, self.texts)
        for name, judge in self.judges.items():
            readings[name] = judge(images, self.texts).numpy().astype(np.float64)
        return readings

    def compare(self, null: dict, other: dict) -> dict:
        """`other`'s means and, paired by prompt, its differences to `null` with 95% intervals."""
        row = truth_table({"null": null, "learned": other}, self.clusters)["learned"]
        attributes = tuple(f"{a}_correct" for a in ATTRIBUTES)
        keep = ("defective", "adherence", *JUDGES, *DEFECT_KINDS, *attributes)
        out = {m: round(row[m], 4) for m in keep}
        # an attribute no evaluation prompt names has no difference
        out.update({f"{m}_minus_null": row[f"{m}_minus_null"] for m in keep if f"{m}_minus_null" in row})
        return out
