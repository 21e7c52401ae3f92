"""The toy world's prompt splits: the captions ReNeg trains on, the held-out prompts, and two sets of the same
scenes phrased as no caption is.

`train` (the captions ReNeg trains on, every one of them also a caption the generator was trained on),
`novel` (the same scenes phrased with templates no caption uses, in the captions' words: text the generator
never saw, and no held-out prompt), `reworded` (a second such set, written apart from the first: other
sentence shapes and function words no caption has), `heldout` (the 64 held-out prompts).
"""

from __future__ import annotations

import numpy as np

from renegx.toyworld import heldout_prompts, train_prompts
from renegx.toyworld.scene import caption_words, sample_scene

SPLITS = ("train", "novel", "reworded", "heldout")
# No caption of the toy world uses these templates (renegx.toyworld.scene has the eight it does); every word
# is in the toy vocabulary, so the text is new to the generator but not to the tokenizer: the captions'
# own words in other orders and combinations.
NOVEL_TEMPLATES = (
    "{colour} {shape} {where}",
    "the {colour} {shape} {where}",
    "a photo of a {size} {colour} {shape} on a {background} background",
    "an image of a {colour} {shape} on a {background} background",
    "a picture of a {size} {colour} {shape}",
    "{size} {colour} {shape} {where}, {background} background",
    "a {colour} {shape} {where} on a {background} background",
    "{colour} {shape} on {background}",
)
# A second set, written apart from the first: other sentence shapes (attributes listed, "there is", a
# background first, a label before a colon) and function words no caption has ("there", "is", "with",
# "one", "drawn", "over", "showing", "coloured", "simple", "drawing": byte-level tokens the text encoder never
# trained on), no position phrase; the attribute words stay the world's own so the picture can be checked.
REWORDED_TEMPLATES = (
    "{shape}, {colour}, {size}",
    "there is one {colour} {shape} with a {background} background",
    "one {size} {shape} in {colour}",
    "{colour} {shape} drawn over a {background} background",
    "showing a {size} {colour} {shape}",
    "a {shape} coloured {colour}, {size}",
    "{background} background with one {colour} {shape}",
    "simple drawing: {colour} {shape}, {size}, {background} background",
)
PHRASINGS = {"novel": NOVEL_TEMPLATES, "reworded": REWORDED_TEMPLATES}
NOVEL_EVALUATION_SEED, NOVEL_TRAINING_SEED = 3000, 4000


def novel_prompts(
    count: int,
    seed: int = NOVEL_EVALUATION_SEED,
    exclude: frozenset[str] = frozenset(),
    phrasing: str = "novel",
) -> list[str]:
    """`count` distinct prompts phrased with `PHRASINGS[phrasing]`'s templates, scenes drawn as the world
    draws them."""
    templates, rng, out = PHRASINGS[phrasing], np.random.default_rng(seed), []
    while len(out) < count:
        template = templates[int(rng.integers(len(templates)))]
        text = template.format(**caption_words(sample_scene(rng)))
        if text not in out and text not in exclude:
            out.append(text)
    return out


def prompts_of_split(split: str, count: int) -> list[str]:
    """The first `count` prompts of one of `SPLITS`."""
    if split in PHRASINGS:
        return novel_prompts(count, phrasing=split)
    return (train_prompts() if split == "train" else heldout_prompts())[:count]


def training_prompts(train_on: str, evaluation: list[str]) -> list[str]:
    """What ReNeg trains on: the training split ("train"), the training split less the evaluation's prompts
    ("rest": read on `train`, captions the embedding never trained on, drawn as the held-out prompts are),
    novel phrasings (`NOVEL_TEMPLATES`) other than the evaluation's ("novel"), or both ("both")."""
    train = train_prompts()
    if train_on == "train":
        return train
    if train_on == "rest":
        evaluated = set(evaluation)
        return [prompt for prompt in train if prompt not in evaluated]
    novel = novel_prompts(len(train), NOVEL_TRAINING_SEED, exclude=frozenset(evaluation))
    return novel if train_on == "novel" else train + novel
