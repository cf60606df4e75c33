"""The building blocks of the synthetic data: colours, shapes, the held-out colour-shape pairs, and drawing.

`transformers_rime.data.synthetic` (the five retrieval kinds) and `transformers_rime.data.reasoning` (the four
reasoning kinds) both draw their objects from here, so the two share one held-out split.
"""

from __future__ import annotations

import math
import random

from PIL import ImageDraw


COLORS = {
    "red": (225, 40, 40),
    "green": (40, 185, 70),
    "blue": (50, 90, 235),
    "yellow": (240, 215, 40),
    "purple": (150, 60, 200),
    "orange": (250, 140, 30),
    "white": (245, 245, 245),
    "cyan": (40, 210, 220),
}
SHAPES = ("circle", "square", "triangle", "star")
# a quarter of the 32 pairs, one per colour and each shape twice: never drawn in the train split
HELDOUT_PAIRS = frozenset((color, SHAPES[i % len(SHAPES)]) for i, color in enumerate(COLORS))
SPLITS = ("train", "heldout")
SIZE = 56  # pixels: 2x2 merged visual tokens per image with the tiny processor (patch 14)


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}.")


def pick_pair(rng: random.Random, split: str, avoid: tuple | None = None) -> tuple[str, str]:
    """A colour-shape pair allowed in `split` (held-out pairs only in `heldout`)."""
    while True:
        pair = (rng.choice(list(COLORS)), rng.choice(SHAPES))
        if pair != avoid and (split == "heldout" or pair not in HELDOUT_PAIRS):
            return pair


def pick_objects(rng: random.Random, split: str, count: int) -> list[tuple[str, str]]:
    """`count` distinct pairs; in `heldout`, at least one of them is a held-out pair."""
    while True:
        objects = [pick_pair(rng, split)]
        while len(objects) < count:
            objects.append(pick_pair(rng, split, avoid=objects[0]))
        if split == "train" or any(o in HELDOUT_PAIRS for o in objects):
            return objects


def place_center(place: str, size: int = SIZE) -> tuple[int, int]:
    """The centre of `place` (`left`, `right`, `top`, `bottom` or `center`) in a square image of `size` pixels."""
    half, quarter = size // 2, size // 4
    return {
        "left": (quarter, half),
        "right": (3 * quarter, half),
        "top": (half, quarter),
        "bottom": (half, 3 * quarter),
        "center": (half, half),
    }[place]


def place_phrase(place: str) -> str:
    """How a caption says `place`: "in the center", "on the left", ..."""
    return "in the center" if place == "center" else f"on the {place}"


def draw_shape(draw: ImageDraw.ImageDraw, color: str, shape: str, center: tuple[float, float], size: int) -> None:
    """Fill `shape` in `color`, centred at `center`, `size` pixels from the centre to the edge."""
    x, y, fill = center[0], center[1], COLORS[color]
    box = (x - size, y - size, x + size, y + size)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(x, y - size), (x - size, y + size), (x + size, y + size)], fill=fill)
    else:  # a five-pointed star: outer and inner vertices alternate
        points = []
        for i in range(10):
            radius = size if i % 2 == 0 else size * 0.45
            angle = math.pi * (i / 5 - 0.5)
            points.append((x + radius * math.cos(angle), y + radius * math.sin(angle)))
        draw.polygon(points, fill=fill)


def dark_background(rng: random.Random) -> tuple[int, int, int]:
    """A random dark background colour, darker than every object colour."""
    return tuple(rng.randint(0, 60) for _ in range(3))
