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

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from unicl.tasks.records import (
    CaptionRecord,
    SegmentationRecord,
    check_unit_floats,
    drop_alpha,
    image_pixels,
    read_image,
    rgb_pixels,
)

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in pixels

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


@dataclasses.dataclass(frozen=True)
class SegmentationDemo:
    """One checked (image, mask) demonstration."""

    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool


@dataclasses.dataclass(frozen=True)
class CaptionDemo:
    """One checked (image, box, caption) demonstration."""

    image: np.ndarray  # (H, W, 3) uint8
    box: Box
    text: str


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


def segmentation_demos(demos: Any, name: str = "demos") -> list[SegmentationDemo]:
    """Check a list of (image, mask) demonstrations.

    A demonstration shows the object: an all-background mask is an error (the
    model is trained on demonstrations that contain their category; a blank mask
    is almost always a mask read wrongly).
    """
    out = []
    for i, (image, mask) in enumerate(_demo_items(demos, name, 2, "(image, mask)")):
        image = to_image(image, f"{name}[{i}][0]")
        mask = to_mask(mask, f"{name}[{i}][1]", size=image.shape[:2])
        if not mask.any():
            raise ValueError(
                f"{name}[{i}][1]: mask has no foreground pixel; a demonstration must show "
                "the object (use category= alone for a prompt without demonstrations)"
            )
        out.append(SegmentationDemo(image, mask))
    return out


def caption_demos(demos: Any, name: str = "demos") -> list[CaptionDemo]:
    """Check a list of (image, box, caption) demonstrations."""
    out = []
    for i, (image, box, text) in enumerate(_demo_items(demos, name, 3, "(image, box, caption)")):
        image = to_image(image, f"{name}[{i}][0]")
        box = to_box(box, f"{name}[{i}][1]", *image.shape[:2])
        out.append(CaptionDemo(image, box, to_text(text, f"{name}[{i}][2]")))
    return out


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


# --------------------------------------------------------------------------- #
# user images as task records (the task plugins lay them out like dataset records)
# --------------------------------------------------------------------------- #


@dataclasses.dataclass
class ImageItem:
    """One checked user image with what belongs to it (mask, box, caption)."""

    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray | None = None  # (H, W) bool
    box: tuple[float, float, float, float] | None = None
    text: str | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySegmentationRecord(SegmentationRecord):
    """A SegmentationRecord whose pixels live in memory (a user's image and mask)."""

    image: np.ndarray | None = None
    mask: np.ndarray | None = None

    def load_image(self) -> np.ndarray:
        return self.image

    def load_mask(self) -> np.ndarray:
        if self.mask is None:
            return np.zeros((self.height, self.width), bool)
        return self.mask


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayCaptionRecord(CaptionRecord):
    """A CaptionRecord whose pixels live in memory."""

    image: np.ndarray | None = None

    def load_image(self) -> np.ndarray:
        return self.image


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Tight (x0, y0, x1, y1) box of a mask's foreground (the whole image if empty)."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return (0.0, 0.0, float(mask.shape[1]), float(mask.shape[0]))
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def segmentation_record(item: ImageItem, image_id: int, category: str) -> ArraySegmentationRecord:
    h, w = item.image.shape[:2]
    mask = item.mask
    return ArraySegmentationRecord(
        image_id=image_id,
        image_path=Path(f"<memory:{image_id}>"),
        category=category,
        category_id=0,
        height=h,
        width=w,
        box=mask_box(mask) if mask is not None else (0.0, 0.0, float(w), float(h)),
        area=float(mask.sum()) if mask is not None else float(h * w),
        segmentations=(),
        image=item.image,
        mask=mask,
    )


def caption_record(item: ImageItem, image_id: int, category: str) -> ArrayCaptionRecord:
    h, w = item.image.shape[:2]
    return ArrayCaptionRecord(
        region_id=image_id,
        image_id=image_id,
        image_path=Path(f"<memory:{image_id}>"),
        category=category,
        phrase=item.text or "",
        box=item.box,
        height=h,
        width=w,
        image=item.image,
    )
