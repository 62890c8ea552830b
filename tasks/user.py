"""A user's images as task records, so that tasks lay them out like dataset records.

The public API (unicl/api.py) checks what a researcher hands it (unicl/inputs.py) and
gives each demonstration and query to the task as a `UserItem`; the task's `user_record`
turns it into a record its `pair` reads. A query's item carries no answer (no mask, no
caption): its record is *unanswered*, and the task's query pair then has output segments
without payload, which the packer leaves for the model to produce (unicl/packer.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from unicl.tasks.records import Box, CaptionRecord, SegmentationRecord

#: the fields a UserItem may carry, as tasks name them in `demo_fields` / `query_fields`
USER_FIELDS = ("image", "mask", "box", "text")


@dataclasses.dataclass
class UserItem:
    """One checked user image with what belongs to it (mask, box, text)."""

    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray | None = None  # (H, W) bool
    box: Box | None = None
    text: str | None = None


def memory_path(image_id: int) -> Path:
    """The stand-in path of an image that lives in memory (named in error messages)."""
    return Path(f"<memory:{image_id}>")


class _InMemory:
    """Pixels held by the record (`image`, `mask` fields) instead of files."""

    def load_image(self) -> np.ndarray:
        return self.image

    def load_mask(self) -> np.ndarray:
        if self.mask is None:
            raise ValueError(f"image {self.image_id} was given without a mask")
        return self.mask


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySegmentationRecord(_InMemory, SegmentationRecord):
    """A SegmentationRecord whose pixels live in memory; without a mask it is unanswered."""

    image: np.ndarray | None = None
    mask: np.ndarray | None = None

    @property
    def answered(self) -> bool:
        return self.mask is not None


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayCaptionRecord(_InMemory, CaptionRecord):
    """A CaptionRecord whose pixels live in memory; without a caption it is unanswered."""

    image: np.ndarray | None = None
    mask: np.ndarray | None = None
    answered: bool = True


@dataclasses.dataclass(frozen=True, eq=False)
class UserRecord(_InMemory):
    """A user's image for a task without its own record type (a plugin task's default).

    `box` is the item's box (the whole image when it has none); `text` is the item's text,
    the answer of a demonstration (None for a query). `category_id` and `region_id` stand
    in for the dataset records' ids (record ids of user items are never stored).
    """

    image_id: int
    category: str
    height: int
    width: int
    box: Box
    image: np.ndarray
    mask: np.ndarray | None = None
    text: str | None = None
    category_id: int = 0

    @property
    def image_path(self) -> Path:
        return memory_path(self.image_id)

    @property
    def region_id(self) -> int:
        return self.image_id

    @property
    def answered(self) -> bool:
        return self.text is not None


def whole_image_box(height: int, width: int) -> Box:
    return (0.0, 0.0, float(width), float(height))


def mask_box(mask: np.ndarray) -> Box:
    """Tight (x0, y0, x1, y1) box of a mask's foreground (the whole image if empty)."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return whole_image_box(*mask.shape)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def segmentation_record(item: UserItem, image_id: int, category: str) -> ArraySegmentationRecord:
    """A demonstration (image and mask) or a query (image only) for segmentation."""
    h, w = item.image.shape[:2]
    mask = item.mask
    return ArraySegmentationRecord(
        image_id=image_id,
        image_path=memory_path(image_id),
        category=category,
        category_id=0,
        height=h,
        width=w,
        box=mask_box(mask) if mask is not None else whole_image_box(h, w),
        area=float(mask.sum()) if mask is not None else float(h * w),
        segmentations=(),
        image=item.image,
        mask=mask,
    )


def caption_record(item: UserItem, image_id: int, category: str) -> ArrayCaptionRecord:
    """A demonstration (image, box and caption) or a query (image and box) for captioning."""
    h, w = item.image.shape[:2]
    return ArrayCaptionRecord(
        region_id=image_id,
        image_id=image_id,
        image_path=memory_path(image_id),
        category=category,
        phrase=item.text or "",
        box=item.box if item.box is not None else whole_image_box(h, w),
        height=h,
        width=w,
        image=item.image,
        answered=item.text is not None,
    )


def user_record(item: UserItem, image_id: int, category: str) -> UserRecord:
    """The default record of a user's item (Task.user_record)."""
    h, w = item.image.shape[:2]
    box = item.box
    if box is None:
        box = mask_box(item.mask) if item.mask is not None else whole_image_box(h, w)
    return UserRecord(image_id, category, h, w, box, item.image, item.mask, item.text)
