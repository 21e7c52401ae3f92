"""What a toy-world picture shows and how people caption it: the vocabulary, seeded scenes and captions.

Defects are common (as on the web) but captions mostly do not mention them; a minority say "a blurry photo of
...", which is what gives a handcrafted negative prompt ("blurry, noisy, ...") something to grip.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 165, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 210, 30),
    "purple": (140, 50, 185),
    "orange": (245, 130, 25),
}
SIZES = {"small": (0.17, 0.22), "large": (0.3, 0.37)}  # radius as a fraction of the side
POSITIONS = {
    "center": ((0.5, 0.5), "in the center"),
    "left": ((0.3, 0.5), "on the left"),
    "right": ((0.7, 0.5), "on the right"),
    "top": ((0.5, 0.3), "at the top"),
    "bottom": ((0.5, 0.7), "at the bottom"),
}
BACKGROUNDS = {
    "white": (242, 242, 238),
    "gray": (150, 150, 150),
    "black": (22, 22, 26),
    "beige": (222, 205, 170),
}
DEFECTS = ("blurry", "noisy", "faded", "cluttered", "cropped")
# What reward-tuned models overdo: the renderer draws these; no web picture, so no training picture, has them.
OVERDONE = ("oversaturated", "oversharpened")
DEFECT_RATE = 0.6  # share of pictures with at least one defect
DEFECT_MENTION_RATE = 0.3  # share of defective pictures whose caption says so
HANDCRAFTED_NEGATIVE = "blurry, noisy, faded, cluttered, cropped"

_TEMPLATES = (
    "a {colour} {shape}",
    "a {size} {colour} {shape}",
    "a {colour} {shape} on a {background} background",
    "a photo of a {colour} {shape}",
    "a {colour} {shape} {where}",
    "{colour} {shape}, {size}, {background} background",
    "an image of a {size} {colour} {shape} {where}",
    "a picture of a {colour} {shape} {where} on a {background} background",
)
_DEFECT_TEMPLATES = (
    "a {defect} photo of a {colour} {shape}",
    "a {defect} image of a {size} {colour} {shape}",
)


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    size: str
    position: str
    background: str
    defects: tuple[str, ...] = field(default=())


def sample_scene(rng: np.random.Generator) -> Scene:
    """A uniformly drawn scene; 60% carry one defect and a fifth of those a second one."""
    defects: tuple[str, ...] = ()
    if rng.random() < DEFECT_RATE:
        count = 2 if rng.random() < 0.2 else 1
        defects = tuple(sorted(rng.choice(DEFECTS, size=count, replace=False).tolist()))
    return Scene(
        shape=str(rng.choice(SHAPES)),
        colour=str(rng.choice(list(COLOURS))),
        size=str(rng.choice(list(SIZES))),
        position=str(rng.choice(list(POSITIONS))),
        background=str(rng.choice(list(BACKGROUNDS))),
        defects=defects,
    )


def caption_words(scene: Scene) -> dict[str, str]:
    """The words a template fills in: colour, shape, size, background and `where` (the position phrase)."""
    return {
        "colour": scene.colour,
        "shape": scene.shape,
        "size": scene.size,
        "background": scene.background,
        "where": POSITIONS[scene.position][1],
    }


def caption(scene: Scene, rng: np.random.Generator, mention_defects: bool | None = None) -> str:
    """One of several templates; a defective scene is described as such with probability 0.3."""
    if mention_defects is None:
        mention_defects = bool(scene.defects) and rng.random() < DEFECT_MENTION_RATE
    words = caption_words(scene)
    if mention_defects and scene.defects:
        template = _DEFECT_TEMPLATES[int(rng.integers(len(_DEFECT_TEMPLATES)))]
        return template.format(defect=str(rng.choice(scene.defects)), **words)
    return _TEMPLATES[int(rng.integers(len(_TEMPLATES)))].format(**words)


def vocabulary() -> list[str]:
    """Every word a toy caption or the handcrafted negative can contain."""
    words = set(SHAPES) | set(COLOURS) | set(SIZES) | set(BACKGROUNDS) | set(DEFECTS)
    for text in (*_TEMPLATES, *_DEFECT_TEMPLATES, *(where for _, where in POSITIONS.values())):
        words |= {w for w in text.replace(",", " ").split() if not w.startswith("{")}
    return sorted(words)


def named_attributes(text: str) -> dict[str, str]:
    """Every attribute a caption names that a picture can be checked for: shape, colour, size, background
    (a background word followed by "background") and position ("on the left", "at the top", ...)."""
    lowered = text.lower().replace(",", " ")
    tokens = lowered.split()
    found = {}
    for key, options in (("shape", SHAPES), ("colour", tuple(COLOURS)), ("size", tuple(SIZES))):
        hits = [t for t in tokens if t in options]
        if hits:
            found[key] = hits[0]
    for word, following in zip(tokens, tokens[1:], strict=False):
        if word in BACKGROUNDS and following == "background":
            found["background"] = word
    padded = f" {' '.join(tokens)} "
    for name, (_, phrase) in POSITIONS.items():
        if f" {phrase} " in padded:
            found["position"] = name
    return found
