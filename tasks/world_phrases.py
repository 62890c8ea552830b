"""The shapes world's region-description grammar (Visual Genome style phrases).

Visual Genome region descriptions (the paper's captioning data,
arXiv 2312.02520) are short free-form phrases: "a red car parked on the left",
"the clock is green". The world writes phrases of that kind from a small grammar
whose words are computed from the rendered pixels of the instance, so a phrase
is always true of its region: the colour is the instance's paint, the size word
comes from its visible (post-occlusion) area, the position word from the
centroid of its visible mask, and the relation from where its nearest
distinguishable neighbour actually is and whether one covers the other.
Templates, synonyms and word choices vary.

The described object's noun always comes before any neighbour's noun, which is
what the Visual Genome reader relies on to map a phrase to its category.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from unicl.tasks.world_shapes import CATEGORY_BY_NAME


@dataclasses.dataclass(frozen=True)
class InstanceView:
    """What the grammar may say about one rendered instance (all from its pixels)."""

    category: str
    colour: str
    cx: float  # centroid of the visible mask (pixels)
    cy: float
    area: float  # visible area (pixels)
    occluded_by: tuple[int, ...]  # indices of instances drawn over a visible part of it
    covers: tuple[int, ...]  # indices of instances it is drawn over


def size_word(area: float, image_area: float, rng: np.random.Generator) -> str:
    """A size adjective for a visible area, or "" for unremarkable (medium) sizes."""
    frac = area / image_area
    if frac < 0.012:
        options = ("tiny", "very small", "small")
    elif frac < 0.04:
        options = ("small", "little")
    elif frac < 0.15:
        return ""
    elif frac < 0.3:
        options = ("large", "big")
    else:
        options = ("huge", "large", "big")
    return options[int(rng.integers(len(options)))]


def position_phrase(cx: float, cy: float, size: int, rng: np.random.Generator) -> str:
    """Where the centroid lies in a 3 x 3 grid of the image, in words."""
    col = min(int(3 * cx / size), 2)
    row = min(int(3 * cy / size), 2)
    horiz = ("left", "", "right")[col]
    vert = ("top", "", "bottom")[row]
    if horiz and vert:
        options = (f"in the {vert} {horiz} corner", f"at the {vert} {horiz}", f"{vert} {horiz}")
    elif horiz:
        options = (f"on the {horiz}", f"on the {horiz} side", f"at the {horiz} edge")
    elif vert:
        options = (f"at the {vert}", f"near the {vert}", f"along the {vert}")
    else:
        options = ("in the middle", "in the center", "near the center")
    return options[int(rng.integers(len(options)))]


def relation_phrase(me: InstanceView, other: InstanceView, index: int, size: int, rng) -> str:
    """How `me` relates to a neighbour (`index` is the neighbour's position)."""
    if index in me.occluded_by:
        options = ("partly hidden behind", "partially covered by", "behind")
    elif index in me.covers:
        options = ("in front of", "overlapping", "on top of")
    else:
        dx, dy = other.cx - me.cx, other.cy - me.cy
        if abs(dx) >= abs(dy):
            options = ("to the left of", "left of") if dx > 0 else ("to the right of", "right of")
        else:
            options = ("above", "over") if dy > 0 else ("below", "under")
        if np.hypot(dx, dy) < 0.3 * size and rng.random() < 0.3:
            options = ("next to", "near", "beside")
    return options[int(rng.integers(len(options)))]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun(category: str, rng: np.random.Generator) -> str:
    """The category name most of the time, else one of its synonyms."""
    nouns = CATEGORY_BY_NAME[category].nouns
    if len(nouns) == 1 or rng.random() < 0.6:
        return nouns[0]
    return nouns[1 + int(rng.integers(len(nouns) - 1))]


def _neighbour(views: list[InstanceView], i: int) -> int | None:
    """The nearest instance that can be told apart from instance i by category or colour."""
    me, best, best_d = views[i], None, np.inf
    for j, other in enumerate(views):
        if j == i or (other.category == me.category and other.colour == me.colour):
            continue
        d = np.hypot(other.cx - me.cx, other.cy - me.cy)
        if j in me.occluded_by or j in me.covers:
            d *= 0.5  # touching neighbours make the most natural reference
        if d < best_d:
            best, best_d = j, d
    return best


def describe(views: list[InstanceView], size: int, rng: np.random.Generator) -> list[str]:
    """One region phrase per instance, each true of that instance's pixels."""
    phrases = []
    for i, me in enumerate(views):
        noun, colour = _noun(me.category, rng), me.colour
        sz = size_word(me.area, size * size, rng)
        pos = position_phrase(me.cx, me.cy, size, rng)
        sized = f"{sz} {colour}" if sz else colour
        templates = [
            f"{_article(sized)} {sized} {noun}",
            f"{_article(colour)} {colour} {noun} {pos}",
            f"the {noun} is {colour}",
            f"{colour} {noun} {pos}",
            f"the {sized} {noun} {pos}",
            f"{_article(sz or noun)} {sz + ' ' if sz else ''}{noun} in {colour}",
            f"the {noun} {pos} is {colour}",
        ]
        j = _neighbour(views, i)
        if j is not None:
            other = views[j]
            rel = relation_phrase(me, other, j, size, rng)
            other_noun = _noun(other.category, rng)
            other_np = f"{_article(other.colour)} {other.colour} {other_noun}"
            templates += [
                f"{_article(colour)} {colour} {noun} {rel} {other_np}",
                f"{sized} {noun} {rel} the {other.colour} {other_noun}",
                f"the {noun} {rel} {other_np} is {colour}",
            ]
            # relations are the richest phrases: pick one of them half of the time
            if rng.random() < 0.5:
                phrases.append(templates[7 + int(rng.integers(3))])
                continue
        phrases.append(templates[int(rng.integers(len(templates)))])
    return phrases
