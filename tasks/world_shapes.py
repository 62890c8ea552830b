"""The shapes world's vocabulary: shape categories, their geometry, names and colours.

The shapes world (docs/data.md "The shapes world") stands in for MS-COCO and
Visual Genome, the paper's data (arXiv 2312.02520). This module holds what a
category *is*: a drawing recipe in unit coordinates, a supercategory, and the
words people use for it (synonyms, used both by the phrase grammar and by the
Visual Genome reader's category mapping). It also holds the named colour
palette. Rendering and file writing live in tasks/world.py; the phrase grammar
in tasks/world_phrases.py.

A shape is a list of drawing operations `(points, fill)`: a polygon given in
unit coordinates (roughly inside [-1, 1]^2, y pointing down) painted with 1
(`fill=True`) or erased with 0 (`fill=False`) in order. Holes (ring, crescent)
are erasures; unions (cross, flower) are several fills.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

Ops = list[tuple[np.ndarray, bool]]  # [(points (N, 2) float64, fill)]


def _regular(n: int, phase: float = -math.pi / 2, radius: float = 1.0) -> np.ndarray:
    """Vertices of a regular n-gon (first vertex at angle `phase`)."""
    t = phase + 2 * math.pi * np.arange(n) / n
    return radius * np.stack([np.cos(t), np.sin(t)], axis=1)  # (n, 2)


def _circle(radius: float = 1.0, cx: float = 0.0, cy: float = 0.0, n: int = 40) -> np.ndarray:
    return _regular(n, 0.0, radius) + np.array([cx, cy])


def _scale(points: np.ndarray, sx: float, sy: float) -> np.ndarray:
    return points * np.array([sx, sy])


# Each builder draws its random proportions from `rng` so that instances of a
# category vary while staying recognisably the same shape.
def _circle_shape(rng: np.random.Generator) -> Ops:
    return [(_circle(), True)]


def _ellipse(rng: np.random.Generator) -> Ops:
    return [(_scale(_circle(), 1.0, rng.uniform(0.45, 0.68)), True)]


def _square(rng: np.random.Generator) -> Ops:
    return [(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float), True)]


def _rectangle(rng: np.random.Generator) -> Ops:
    return [(_scale(_square(rng)[0][0], 1.0, rng.uniform(0.4, 0.62)), True)]


def _triangle(rng: np.random.Generator) -> Ops:
    pts = _regular(3) + np.array([0.0, 0.25])
    return [(_scale(pts, rng.uniform(0.85, 1.15), 1.0), True)]


def _star(rng: np.random.Generator) -> Ops:
    outer = _regular(5)
    inner = _regular(5, -math.pi / 2 + math.pi / 5, rng.uniform(0.38, 0.48))
    pts = np.empty((10, 2))
    pts[0::2], pts[1::2] = outer, inner
    return [(pts, True)]


def _ring(rng: np.random.Generator) -> Ops:
    return [(_circle(), True), (_circle(rng.uniform(0.5, 0.65)), False)]


def _cross(rng: np.random.Generator) -> Ops:
    w = rng.uniform(0.15, 0.22)
    arm_y = rng.uniform(-0.45, -0.3)
    vertical = np.array([[-w, -1], [w, -1], [w, 1], [-w, 1]])
    horizontal = np.array(
        [[-0.62, arm_y - w], [0.62, arm_y - w], [0.62, arm_y + w], [-0.62, arm_y + w]]
    )
    return [(vertical, True), (horizontal, True)]


def _plus(rng: np.random.Generator) -> Ops:
    w = rng.uniform(0.2, 0.3)
    bar = np.array([[-1, -w], [1, -w], [1, w], [-1, w]])
    return [(bar, True), (bar[:, ::-1].copy(), True)]


def _heart(rng: np.random.Generator) -> Ops:
    t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return [(np.stack([x, y + 2.5], axis=1) / 16.5, True)]


def _hexagon(rng: np.random.Generator) -> Ops:
    return [(_regular(6, 0.0), True)]


def _pentagon(rng: np.random.Generator) -> Ops:
    return [(_regular(5) + np.array([0.0, 0.1]), True)]


def _octagon(rng: np.random.Generator) -> Ops:
    return [(_regular(8, math.pi / 8), True)]


def _diamond(rng: np.random.Generator) -> Ops:
    half_width = rng.uniform(0.5, 0.66)
    return [(np.array([[0, -1], [half_width, 0], [0, 1], [-half_width, 0]], float), True)]


def _crescent(rng: np.random.Generator) -> Ops:
    bite = _circle(rng.uniform(0.8, 0.9), rng.uniform(0.4, 0.55), -0.12)
    return [(_circle(), True), (bite, False)]


def _arrow(rng: np.random.Generator) -> Ops:
    s, h = rng.uniform(0.16, 0.24), rng.uniform(0.5, 0.65)
    pts = [[-1, -s], [0.2, -s], [0.2, -h], [1, 0], [0.2, h], [0.2, s], [-1, s]]
    return [(np.array(pts, float), True)]


def _trapezoid(rng: np.random.Generator) -> Ops:
    top = rng.uniform(0.35, 0.6)
    return [(np.array([[-top, -0.6], [top, -0.6], [1, 0.6], [-1, 0.6]], float), True)]


def _semicircle(rng: np.random.Generator) -> Ops:
    t = np.linspace(math.pi, 2 * math.pi, 24)
    arc = np.stack([np.cos(t), np.sin(t) + 0.45], axis=1)
    return [(arc, True)]


def _teardrop(rng: np.random.Generator) -> Ops:
    t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    x = 0.8 * np.sin(t) * np.sin(t / 2) ** rng.uniform(0.9, 1.4)
    return [(np.stack([x, -np.cos(t)], axis=1), True)]


def _flower(rng: np.random.Generator) -> Ops:
    n = int(rng.integers(5, 7))
    petal_r, dist = 0.36, 0.62
    ops = [(_circle(0.45, n=24), True)]
    for k in range(n):
        a = 2 * math.pi * k / n
        ops.append((_circle(petal_r, dist * math.cos(a), dist * math.sin(a), n=20), True))
    return ops


class ShapeCategory:
    """One category of the world: its drawing recipe and the words for it."""

    def __init__(
        self, name: str, supercategory: str, synonyms: tuple[str, ...], build: Callable
    ) -> None:
        self.name = name
        self.supercategory = supercategory
        self.synonyms = synonyms  # other nouns a phrase may use (the name itself is first)
        self.build = build

    @property
    def nouns(self) -> tuple[str, ...]:
        return (self.name, *self.synonyms)

    def __repr__(self) -> str:
        return f"ShapeCategory({self.name!r})"


#: All categories in id order (ids are 1-based positions in this tuple).
CATEGORIES: tuple[ShapeCategory, ...] = (
    ShapeCategory("circle", "round", ("disc", "dot", "round shape"), _circle_shape),
    ShapeCategory("square", "polygon", ("square tile",), _square),
    ShapeCategory("triangle", "polygon", ("triangular shape",), _triangle),
    ShapeCategory("star", "symbol", ("five-pointed star",), _star),
    ShapeCategory("ring", "round", ("donut", "hoop"), _ring),
    ShapeCategory("cross", "symbol", ("latin cross",), _cross),
    ShapeCategory("heart", "symbol", ("heart shape",), _heart),
    ShapeCategory("hexagon", "polygon", ("six-sided shape",), _hexagon),
    ShapeCategory("pentagon", "polygon", ("five-sided shape",), _pentagon),
    ShapeCategory("diamond", "polygon", ("rhombus",), _diamond),
    ShapeCategory("crescent", "round", ("crescent moon", "moon"), _crescent),
    ShapeCategory("arrow", "symbol", ("arrow shape", "pointer"), _arrow),
    ShapeCategory("ellipse", "round", ("oval",), _ellipse),
    ShapeCategory("trapezoid", "polygon", ("trapezium",), _trapezoid),
    ShapeCategory("plus", "symbol", ("plus sign", "plus shape"), _plus),
    ShapeCategory("semicircle", "round", ("half circle", "half disc"), _semicircle),
    ShapeCategory("octagon", "polygon", ("eight-sided shape",), _octagon),
    ShapeCategory("rectangle", "polygon", ("oblong",), _rectangle),
    ShapeCategory("teardrop", "round", ("drop", "droplet"), _teardrop),
    ShapeCategory("flower", "symbol", ("blossom",), _flower),
)
CATEGORY_BY_NAME: dict[str, ShapeCategory] = {c.name: c for c in CATEGORIES}

#: Held out of every training file: in-context generalisation is measured on these.
DEFAULT_UNSEEN: tuple[str, ...] = ("heart", "octagon", "trapezoid", "teardrop", "flower")

#: Named colours: name -> RGB. Saturated or extreme so that they stand out from the
#: muted mid-tone backgrounds (tasks/world.py keeps backgrounds in that range).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 220, 30),
    "green": (35, 165, 55),
    "cyan": (30, 205, 215),
    "blue": (30, 65, 210),
    "purple": (125, 45, 175),
    "pink": (245, 125, 195),
    "brown": (120, 70, 25),
    "white": (248, 248, 248),
    "black": (18, 18, 18),
}


def nearest_colour(rgb: np.ndarray) -> str:
    """The palette name closest (Euclidean RGB) to a mean pixel colour."""
    names = list(COLOURS)
    table = np.array([COLOURS[n] for n in names], float)  # (K, 3)
    return names[int(np.argmin(((table - np.asarray(rgb, float)) ** 2).sum(1)))]


def category_names() -> list[str]:
    return [c.name for c in CATEGORIES]


def check_category_names(names, field: str) -> None:
    """Raise a ValueError naming `field` if any name is not a world category."""
    unknown = [n for n in names if n not in CATEGORY_BY_NAME]
    if unknown:
        raise ValueError(
            f"{field}: unknown shape categories {unknown}; valid names: {category_names()}"
        )
