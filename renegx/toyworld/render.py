"""Draw a toy scene as a small RGB picture, defects included (PIL at 4× then downsampled: smooth edges).

Besides the web's defects (`scene.DEFECTS`) it draws the overdone ones (`scene.OVERDONE`: colour pushed past
the palette, edges sharpened into halos), which no training picture carries; they exist so that the meters'
recall on them can be measured."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from renegx.toyworld.scene import BACKGROUNDS, COLOURS, POSITIONS, SIZES, Scene

RESOLUTION = 32
_SUPERSAMPLE = 4


def _outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.75), (cx - r * 0.95, cy + r * 0.75)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.8, cy), (cx, cy + r), (cx - r * 0.8, cy)]
    return None  # circle


def shape_area(shape: str) -> float:
    """The area of `shape` drawn at radius 1 (`_outline`'s polygon, or the circle's π)."""
    points = _outline(shape, 0.0, 0.0, 1.0)
    if points is None:
        return float(np.pi)
    xs, ys = np.array(points).T
    return float(abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))) / 2)


def _centre(scene: Scene, rng: np.random.Generator, radius: float) -> tuple[float, float]:
    (fx, fy), _ = POSITIONS[scene.position]
    cx, cy = fx + rng.uniform(-0.05, 0.05), fy + rng.uniform(-0.05, 0.05)
    if "cropped" in scene.defects:  # centre near an edge: a third to a half of the shape is cut off
        inset = radius * rng.uniform(0.0, 0.4)
        if rng.random() < 0.5:
            cx = inset if fx <= 0.5 else 1 - inset
        else:
            cy = inset if fy <= 0.5 else 1 - inset
    return cx, cy


def render_scene(scene: Scene, rng: np.random.Generator, resolution: int = RESOLUTION) -> np.ndarray:
    """`(resolution, resolution, 3)` uint8 picture of `scene`, its defects drawn with `rng`."""
    big = resolution * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    radius = rng.uniform(*SIZES[scene.size])
    cx, cy = _centre(scene, rng, radius)
    colour = tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in COLOURS[scene.colour])
    points = _outline(scene.shape, cx * big, cy * big, radius * big)
    if points is None:
        r = radius * big
        draw.ellipse((cx * big - r, cy * big - r, cx * big + r, cy * big + r), fill=colour)
    else:
        draw.polygon(points, fill=colour)
    if "cluttered" in scene.defects:
        for _ in range(int(rng.integers(3, 6))):
            ends = [tuple(rng.uniform(0, big, 2)) for _ in range(2)]
            stroke = tuple(int(v) for v in rng.integers(0, 256, 3))
            draw.line(ends, fill=stroke, width=int(rng.integers(3, 7)))
    image = image.resize((resolution, resolution), Image.Resampling.LANCZOS)
    if "blurry" in scene.defects:
        image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(1.0, 1.6))))
    if "oversharpened" in scene.defects:  # an unsharp mask far past taste: halos and a ringing rim
        amount = int(rng.integers(200, 351))
        image = image.filter(ImageFilter.UnsharpMask(radius=float(rng.uniform(1.0, 1.5)), percent=amount))
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    if "faded" in scene.defects:
        grey = rng.uniform(0.6, 0.8)
        pixels = 0.4 * pixels + 0.6 * grey
    if "oversaturated" in scene.defects:  # each pixel's colour pushed away from its own grey, then clipped
        grey = pixels.mean(-1, keepdims=True)
        pixels = grey + rng.uniform(1.8, 2.6) * (pixels - grey)
    if "noisy" in scene.defects:
        pixels = pixels + rng.normal(0.0, rng.uniform(0.1, 0.18), pixels.shape)
    return np.round(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)


def render_batch(scenes: list[Scene], seed: int, resolution: int = RESOLUTION) -> np.ndarray:
    """`(N, resolution, resolution, 3)` uint8 pictures, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    return np.stack([render_scene(scene, rng, resolution) for scene in scenes])
