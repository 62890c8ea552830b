"""Coercion and validation of what researchers hand to the public API.

The API (unicl/api.py, README.md "Python API") accepts images as PIL
images, arrays or file paths; masks as (H, W) arrays, PIL images or paths; boxes
as (x0, y0, x1, y1) in the pixels of their image. Everything is checked here,
before any tokenizer or model sees it, so a mistake is reported as a ValueError /
TypeError / FileNotFoundError that names the argument (`demos[1][0]`, `query`,
`box`), never as a traceback from deep inside the model, and never turned into a
plausible but wrong answer:

- images: uint8 as is, uint16 (16-bit PNGs) scaled to 0-255, floats in [0, 1],
  grey or RGB, an alpha channel only when fully opaque (tasks/records.py
  `rgb_pixels`, shared with the dataset readers);
- masks: bool, integers whose values lie within {0, 1}, {0, 255} or {0, 65535},
  floats in [0, 1] (> 0.5 is foreground); any other value set, a label map such
  as {0, 2} included, is refused with the values found;
- a demonstration's mask must show the object (at least one foreground pixel).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from unicl.tasks.records import (
    Box,
    check_unit_floats,
    drop_alpha,
    image_pixels,
    read_image,
    rgb_pixels,
)
from unicl.tasks.user import USER_FIELDS, UserItem

#: What an image argument may be, for error messages.
IMAGE_KINDS = (
    "a PIL image, an (H, W, 3) or (H, W) array (uint8, uint16, or float in [0, 1]) "
    "or an image file path"
)
MASK_KINDS = (
    "an (H, W) array (bool, 0/1, 0/255 or float in [0, 1]), a PIL image or an image file path"
)
#: integer mask values read as binary (background, foreground)
MASK_LEVELS = ((0, 1), (0, 255), (0, 65535))


def _pixels(value: Any, name: str, kinds: str) -> tuple[np.ndarray, str]:
    """An image-like argument as (pixels in their own range, what they came from)."""
    if isinstance(value, (str, os.PathLike)):
        pixels, mode = read_image(value, name)
        return pixels, f"file {Path(value)} (mode {mode!r})"
    if isinstance(value, Image.Image):
        return image_pixels(value), f"the PIL image (mode {value.mode!r})"
    if isinstance(value, np.ndarray):
        return value, f"the {value.dtype} array"
    raise TypeError(f"{name}: expected {kinds}, got {type(value).__name__}")


def to_image(value: Any, name: str = "image") -> np.ndarray:
    """`value` as an (H, W, 3) uint8 RGB array, or a TypeError/ValueError naming `name`.

    PIL images of any mode, paths and arrays, converted by `rgb_pixels` (see the
    module docstring): 16-bit images are scaled, not clipped; transparency, NaN and
    arrays of unknown range are refused.
    """
    pixels, source = _pixels(value, name, IMAGE_KINDS)
    return rgb_pixels(pixels, name, source)


def _mask_levels(mask: np.ndarray, name: str, source: str) -> np.ndarray:
    """Mask values -> bool, element by element, by the rules of the module docstring."""
    if mask.dtype == np.bool_:
        return mask
    accepted = (
        "bool, integers within {0, 1}, {0, 255} or {0, 65535}, or floats in [0, 1] "
        "(> 0.5 is foreground); for a label map pass (labels == k)"
    )
    if np.issubdtype(mask.dtype, np.floating):
        check_unit_floats(mask, f"{name}: the float mask", f"accepted: {accepted}")
        return mask > 0.5
    if not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(
            f"{name}: {source} is not a mask (dtype {mask.dtype}); accepted: {accepted}"
        )
    values = np.unique(mask)
    for background, foreground in MASK_LEVELS:
        if np.isin(values, (background, foreground)).all():
            return mask == foreground
    shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
    raise ValueError(f"{name}: mask values {{{shown}}} are not a binary mask; accepted: {accepted}")


def to_mask(value: Any, name: str = "mask", size: tuple[int, int] | None = None) -> np.ndarray:
    """`value` as an (H, W) bool mask; `size` = (H, W) of its image, checked if given.

    Values follow the module docstring ({0, 2} is an error, not an empty mask). PIL
    images and files are read with their own values (an "L" PNG of 0/1 is a 0/1
    mask); (H, W, C) masks must have equal colour channels and an opaque alpha.
    """
    mask, source = _pixels(value, name, MASK_KINDS)
    if mask.ndim == 3 and mask.shape[2] in (2, 4):
        mask = drop_alpha(mask, name, source)
    if mask.ndim not in (2, 3) or (mask.ndim == 3 and mask.shape[2] not in (1, 3)):
        raise ValueError(f"{name}: mask arrays must have shape (H, W), got {tuple(mask.shape)}")
    if mask.size == 0:
        raise ValueError(f"{name}: mask is empty (shape {tuple(mask.shape)})")
    mask = _mask_levels(mask, name, source)  # (H, W) or (H, W, C) bool
    if mask.ndim == 3:
        if (mask != mask[:, :, :1]).any():
            raise ValueError(
                f"{name}: {source} has colours (its channels differ); a mask is one "
                "channel: give an (H, W) array"
            )
        mask = mask[:, :, 0]
    if size is not None and tuple(mask.shape) != tuple(size):
        raise ValueError(
            f"{name}: mask is {mask.shape[0]}x{mask.shape[1]} (HxW) but its image is "
            f"{size[0]}x{size[1]}; a mask must have its image's size"
        )
    return np.ascontiguousarray(mask)


def to_box(value: Any, name: str, height: int, width: int) -> Box:
    """`value` as an (x0, y0, x1, y1) float box inside a `width` x `height` image."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise TypeError(f"{name}: expected a box (x0, y0, x1, y1) in pixels, got {value!r}")
    if len(value) != 4:
        raise ValueError(f"{name}: a box has 4 numbers (x0, y0, x1, y1), got {len(value)}")
    if any(isinstance(v, (bool, np.bool_)) for v in value):
        raise TypeError(f"{name}: box coordinates must be numbers, not bools, got {value!r}")
    try:
        x0, y0, x1, y1 = (float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name}: box coordinates must be numbers, got {value!r}") from err
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"{name}: box coordinates must be finite, got {value!r}")
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"{name}: box must satisfy x0 < x1 and y0 < y1, got {value!r}")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise ValueError(
            f"{name}: box {value!r} lies outside the image (width {width}, height {height}); "
            "boxes are in the image's pixels"
        )
    return (x0, y0, x1, y1)


def to_text(value: Any, name: str) -> str:
    """A non-empty caption string."""
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected a caption string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name}: caption is empty")
    return value.strip()


def to_category(value: Any, name: str = "category") -> str | None:
    """None or a non-empty category name."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected a category name (str) or None, got {value!r}")
    if not value.strip():
        raise ValueError(f"{name}: expected a category name (non-empty str) or None, got {value!r}")
    return value.strip()


def _demo_items(demos: Any, name: str, arity: int, form: str) -> list[Sequence[Any]]:
    if demos is None:
        return []
    if isinstance(demos, (str, bytes, np.ndarray, Image.Image)) or not isinstance(demos, Sequence):
        raise TypeError(f"{name}: expected a list of {form} tuples, got {type(demos).__name__}")
    items = []
    for i, demo in enumerate(demos):
        if isinstance(demo, (str, bytes, np.ndarray)) or not isinstance(demo, Sequence):
            raise TypeError(f"{name}[{i}]: expected a {form} tuple, got {type(demo).__name__}")
        if len(demo) != arity:
            raise ValueError(
                f"{name}[{i}]: expected a {form} tuple of {arity} items, got {len(demo)}"
            )
        items.append(demo)
    return items


def demo_items(
    demos: Any, fields: Sequence[str], name: str = "demos", labels: Sequence[str] | None = None
) -> list[UserItem]:
    """Check a list of demonstrations, each a tuple of `fields` (tasks/user.py USER_FIELDS).

    `labels` name the fields in messages (default: the field names). A demonstration's
    mask must show the object (at least one foreground pixel): the model is trained on
    demonstrations that contain their category, and a blank mask is almost always a mask
    read wrongly.
    """
    labels = list(labels or fields)
    form = f"({', '.join(labels)})"
    out = []
    for i, values in enumerate(_demo_items(demos, name, len(fields), form)):
        names = [f"{name}[{i}][{j}]" for j in range(len(fields))]
        item = user_item(dict(zip(fields, values)), names)
        if item.mask is not None and not item.mask.any():
            raise ValueError(
                f"{names[list(fields).index('mask')]}: mask has no foreground pixel; a "
                "demonstration must show the object (use category= alone for a prompt without "
                "demonstrations)"
            )
        out.append(item)
    return out


def query_values(query: Any, fields: Sequence[str], name: str = "query") -> list[Any]:
    """A query of several fields (e.g. (image, box)) as its list of values, checked for arity."""
    form = f"({', '.join(fields)})"
    if isinstance(query, (str, bytes, np.ndarray)) or not isinstance(query, Sequence):
        raise TypeError(f"{name}: expected a {form} tuple, got {type(query).__name__}")
    if len(query) != len(fields):
        raise ValueError(
            f"{name}: expected a {form} tuple of {len(fields)} items, got {len(query)}"
        )
    return list(query)


def user_item(values: dict[str, Any], names: Sequence[str]) -> UserItem:
    """One checked UserItem from {field: value}; `names` name the values in messages, in order.

    The image comes first: a mask must have its size and a box must lie inside it.
    """
    if set(values) - set(USER_FIELDS) or "image" not in values:
        raise ValueError(
            f"a user item has the fields {USER_FIELDS}, an image among them; got {sorted(values)}"
        )
    label = dict(zip(values, names))
    image = to_image(values["image"], label["image"])
    h, w = image.shape[:2]
    item = UserItem(image)
    if "mask" in values:
        item.mask = to_mask(values["mask"], label["mask"], size=(h, w))
    if "box" in values:
        item.box = to_box(values["box"], label["box"], h, w)
    if "text" in values:
        item.text = to_text(values["text"], label["text"])
    return item


def segmentation_demos(demos: Any, name: str = "demos") -> list[UserItem]:
    """Check a list of (image, mask) demonstrations."""
    return demo_items(demos, ("image", "mask"), name)


def caption_demos(demos: Any, name: str = "demos") -> list[UserItem]:
    """Check a list of (image, box, caption) demonstrations."""
    return demo_items(demos, ("image", "box", "text"), name, ("image", "box", "caption"))


def require_prompt(demos: Sequence[Any], category: str | None, name: str = "demos") -> None:
    """The model needs something to go on: at least one demonstration or a category."""
    if not demos and category is None:
        raise ValueError(
            f"{name} is empty and no category was given: pass at least one demonstration "
            "or category='name' (0-shot prompting uses the category text)"
        )


def is_image_like(value: Any) -> bool:
    """True for one image (not a list of images): PIL, ndarray or a path."""
    return isinstance(value, (Image.Image, np.ndarray, str, os.PathLike))
