"""Dataset records: what a task draws demonstrations and queries from.

PAPER.md "Data": a segmentation record is one (image, category) pair of MS-COCO
whose mask merges every instance of that category; a caption record is one
Visual Genome region description mapped to a category. Both readers
(tasks/coco.py, tasks/vg.py) and the shapes world produce these records, so the
task code never knows which dataset it is reading. Records are light: pixels
and masks are read from disk only when asked for.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in pixels


def load_rgb(path: Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB; FileNotFoundError names the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))  # (H, W, 3)


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """Decode one COCO segmentation (polygons, RLE or compressed RLE) to (H, W) bool."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):  # polygons: [[x0, y0, x1, y1, ...], ...]
        if not segmentation:
            return np.zeros((height, width), bool)
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        if isinstance(segmentation["counts"], list):  # uncompressed RLE (crowd regions)
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            counts = segmentation["counts"]
            counts = counts.encode("ascii") if isinstance(counts, str) else counts
            rle = {"size": list(segmentation["size"]), "counts": counts}
    else:
        raise ValueError(
            "segmentation must be a polygon list or an RLE dict with 'counts', "
            f"got {type(segmentation).__name__}"
        )
    mask = mask_utils.decode(rle)
    if mask.ndim == 3:  # merge returns one RLE, frPyObjects on one polygon list may not
        mask = mask.any(axis=2)
    if mask.shape != (height, width):
        raise ValueError(
            f"segmentation decodes to {mask.shape}, but the image is {(height, width)}"
        )
    return mask.astype(bool)


@dataclasses.dataclass(frozen=True)
class SegmentationRecord:
    """One (image, category): all instances of the category merged into one mask."""

    image_id: int
    image_path: Path
    category: str
    category_id: int
    height: int
    width: int
    box: Box  # union box of the category's instances
    area: float  # summed instance area (pixels)
    segmentations: tuple  # raw COCO segmentation objects (RLE / polygons), one per instance

    def load_image(self) -> np.ndarray:
        """The image as (H, W, 3) uint8 RGB."""
        return load_rgb(self.image_path)

    def load_mask(self) -> np.ndarray:
        """The merged category mask as (H, W) bool (decoded on each call)."""
        mask = np.zeros((self.height, self.width), bool)
        for seg in self.segmentations:
            mask |= decode_segmentation(seg, self.height, self.width)
        return mask


@dataclasses.dataclass(frozen=True)
class CaptionRecord:
    """One Visual Genome region description mapped to a category."""

    region_id: int
    image_id: int
    image_path: Path
    category: str
    phrase: str
    box: Box
    height: int
    width: int

    def load_image(self) -> np.ndarray:
        """The image as (H, W, 3) uint8 RGB."""
        return load_rgb(self.image_path)


def read_json(path: Path, what: str):
    """Load a json file, with errors that name the file and what it should hold."""
    import json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} file {path} is not valid json: {exc}") from exc


def require(record: dict, key: str, where: str):
    """record[key], or a ValueError naming the field and where the record came from."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a json object, got {type(record).__name__}")
    if key not in record:
        raise ValueError(f"{where}: missing field {key!r}")
    return record[key]
