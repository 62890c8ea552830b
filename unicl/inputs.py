"""Coercion and validation of what researchers hand to the public API.

The API (unicl/api.py, DESIGN.md "Public Python API") accepts images as PIL
images, (H, W, 3) uint8 arrays or file paths; masks as (H, W) bool or 0-255
arrays, PIL images or paths; boxes as (x0, y0, x1, y1) in the pixels of their
image. Everything is checked here, before any tokenizer or model sees it, so a
mistake is reported as a ValueError / TypeError / FileNotFoundError that names
the argument (`demos[1][0]`, `query`, `box`), never as a traceback from deep
inside the model.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from unicl.tasks.records import CaptionRecord, SegmentationRecord

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in pixels

#: What an image argument may be, for error messages.
IMAGE_KINDS = "a PIL image, an (H, W, 3) uint8 array or an image file path"
MASK_KINDS = "an (H, W) bool or 0-255 uint8 array, a PIL image or an image file path"


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


def _open_path(value: str | os.PathLike, name: str) -> Image.Image:
    """A file path opened as a PIL image (fully loaded), or a clear error naming `name`."""
    path = Path(value)
    if not path.exists():
        raise FileNotFoundError(f"{name}: file not found: {path}")
    if not path.is_file():
        raise ValueError(f"{name}: {path} is not a file")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{name}: {path} is not a readable image file ({err})") from err


def to_image(value: Any, name: str = "image") -> np.ndarray:
    """`value` as an (H, W, 3) uint8 RGB array.

    Accepts PIL images (any mode; converted to RGB), (H, W, 3) uint8 arrays and
    paths. Grey (H, W) uint8 arrays are repeated to 3 channels. Anything else is a
    TypeError/ValueError naming `name`.
    """
    if isinstance(value, (str, os.PathLike)):
        value = _open_path(value, name)
    if isinstance(value, Image.Image):
        array = np.asarray(value.convert("RGB"))  # (H, W, 3)
    elif isinstance(value, np.ndarray):
        if value.dtype != np.uint8:
            raise TypeError(
                f"{name}: image arrays must be uint8 (0-255), got dtype {value.dtype}; "
                "convert float images with (x * 255).round().astype(np.uint8)"
            )
        if value.ndim == 2:
            array = np.repeat(value[:, :, None], 3, axis=2)  # (H, W, 3)
        elif value.ndim == 3 and value.shape[2] == 3:
            array = value
        else:
            raise ValueError(
                f"{name}: image arrays must have shape (H, W, 3), got {tuple(value.shape)}"
            )
    else:
        raise TypeError(f"{name}: expected {IMAGE_KINDS}, got {type(value).__name__}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"{name}: image is empty (shape {tuple(array.shape)})")
    return np.ascontiguousarray(array)


def to_mask(value: Any, name: str = "mask", size: tuple[int, int] | None = None) -> np.ndarray:
    """`value` as an (H, W) bool mask; `size` = (H, W) of its image, checked if given.

    bool arrays are taken as they are; integer arrays whose values are all 0/1 are
    taken as 0/1 masks, other uint8 arrays (0-255) and PIL images are thresholded
    at 127 (PAPER.md: masks are 0/255 images). An (H, W, 3) array or RGB image is
    reduced to its channel mean first.
    """
    if isinstance(value, (str, os.PathLike)):
        value = _open_path(value, name)
    if isinstance(value, Image.Image):
        mask = np.asarray(value.convert("L")) > 127  # (H, W)
    elif isinstance(value, np.ndarray):
        array = value
        if array.ndim == 3 and array.shape[2] in (1, 3):
            if array.dtype == np.bool_:
                array = array.any(axis=2)
            else:
                array = array.mean(axis=2)  # (H, W) float
                array = array.round().astype(np.uint8) if value.dtype == np.uint8 else array
        if array.ndim != 2:
            raise ValueError(
                f"{name}: mask arrays must have shape (H, W), got {tuple(value.shape)}"
            )
        if array.dtype == np.bool_:
            mask = array
        elif np.issubdtype(array.dtype, np.integer):
            if array.size and (array.min() < 0 or array.max() > 255):
                raise ValueError(
                    f"{name}: mask values must lie in 0-255, got {array.min()}..{array.max()}"
                )
            mask = array > 0 if array.size and array.max() <= 1 else array > 127
        else:
            raise TypeError(
                f"{name}: mask arrays must be bool or uint8 (0/1 or 0-255), got dtype {value.dtype}"
            )
    else:
        raise TypeError(f"{name}: expected {MASK_KINDS}, got {type(value).__name__}")
    if size is not None and tuple(mask.shape) != tuple(size):
        raise ValueError(
            f"{name}: mask is {mask.shape[0]}x{mask.shape[1]} (HxW) but its image is "
            f"{size[0]}x{size[1]}; a mask must have its image's size"
        )
    return np.ascontiguousarray(mask, dtype=bool)


def to_box(value: Any, name: str, height: int, width: int) -> Box:
    """`value` as an (x0, y0, x1, y1) float box inside a `width` x `height` image."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise TypeError(f"{name}: expected a box (x0, y0, x1, y1) in pixels, got {value!r}")
    if len(value) != 4:
        raise ValueError(f"{name}: a box has 4 numbers (x0, y0, x1, y1), got {len(value)}")
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
    if not isinstance(value, str) or not value.strip():
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
    """Check a list of (image, mask) demonstrations."""
    out = []
    for i, (image, mask) in enumerate(_demo_items(demos, name, 2, "(image, mask)")):
        image = to_image(image, f"{name}[{i}][0]")
        mask = to_mask(mask, f"{name}[{i}][1]", size=image.shape[:2])
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
