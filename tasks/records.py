"""Dataset records: what a task draws demonstrations and queries from.

The paper's data (arXiv 2312.02520): a segmentation record is one (image,
category) pair of MS-COCO whose mask merges every instance of that category; a
caption record is one Visual Genome region description mapped to a category.
Both readers (tasks/coco.py, tasks/vg.py) and the shapes world produce these
records, so the task code never knows which dataset it is reading. Records are
light: pixels and masks are read from disk only when asked for.

Pixels: every image, a dataset's or a user's (unicl/inputs.py), becomes (H, W, 3)
uint8 RGB through `rgb_pixels`, which converts what has one meaning (16-bit PNGs,
palettes, floats in [0, 1]) and refuses what has none (transparent pixels, integer
arrays of unknown range, NaN) with an error that names the image. Errors of the
readers name the file and the record (image id, annotation or region id).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in pixels

#: PIL modes whose pixels are read as they are (other modes are converted by PIL first)
_RAW_MODES = ("1", "L", "LA", "RGB", "RGBA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
#: PIL modes with an alpha channel that PIL converts to RGBA (premultiplied, palette + alpha)
_ALPHA_MODES = ("PA", "La", "RGBa")
#: what PIL raises for a file that is not a (complete) image
_PIL_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError)


def image_pixels(image: Image.Image) -> np.ndarray:
    """A PIL image's pixels as an (H, W) or (H, W, C) array in their own range.

    Nothing is rescaled or clipped: mode "1" gives bool, "L"/"RGB"/"RGBA"/"LA" uint8,
    16-bit greys ("I;16*") uint16, "I" int32, "F" float32. A PNG has no 32-bit integer
    pixels: an "I" image read from one (older Pillow's 16-bit greys) is uint16. Palettes and other
    colour spaces (CMYK, YCbCr, ...) are converted by PIL to RGB, or RGBA when they
    carry transparency.
    """
    if image.mode in ("P", "L", "RGB") and "transparency" in image.info:
        return np.asarray(image.convert("RGBA"))  # (H, W, 4)
    if image.mode in _RAW_MODES:
        pixels = np.asarray(image)
        if image.mode.startswith("I;16") or (image.mode == "I" and image.format == "PNG"):
            pixels = pixels.astype(np.uint16)
        return pixels
    return np.asarray(image.convert("RGBA" if image.mode in _ALPHA_MODES else "RGB"))


def _check_file(path: Path, name: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{name}: file not found: {path}")
    if not path.is_file():
        raise ValueError(f"{name}: {path} is not a file")


def read_image(path: str | Path, name: str) -> tuple[np.ndarray, str]:
    """An image file's pixels (`image_pixels`) and PIL mode; errors name `name` and the path.

    A missing path is a FileNotFoundError; a directory, a file that is not an image
    or a truncated one is a ValueError.
    """
    path = Path(path)
    _check_file(path, name)
    try:
        with Image.open(path) as im:
            im.load()
            return image_pixels(im), im.mode
    except _PIL_ERRORS as err:
        raise ValueError(f"{name}: {path} is not a readable image file ({err})") from err


def image_size(path: str | Path, name: str) -> tuple[int, int]:
    """(height, width) from an image file's header, with `read_image`'s errors."""
    path = Path(path)
    _check_file(path, name)
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except _PIL_ERRORS as err:
        raise ValueError(f"{name}: {path} is not a readable image file ({err})") from err


def _opaque(alpha: np.ndarray) -> bool:
    """Is every pixel of an alpha channel fully opaque in its dtype's range?"""
    if alpha.dtype == np.bool_:
        return bool(alpha.all())
    if alpha.dtype == np.uint16:
        return bool((alpha == 65535).all())
    if np.issubdtype(alpha.dtype, np.floating):
        return bool((alpha == 1.0).all())
    return bool((alpha == 255).all())


def drop_alpha(pixels: np.ndarray, name: str, source: str) -> np.ndarray:
    """(H, W, 2 or 4) pixels without their alpha channel, which must be fully opaque.

    Transparent pixels have no colour of their own (what shows depends on the
    background), so they are refused rather than guessed.
    """
    if not _opaque(pixels[:, :, -1]):
        raise ValueError(
            f"{name}: {source} has transparent pixels (an alpha channel below full opacity); "
            "flatten it onto a background first, e.g. Image.alpha_composite(background, image)"
        )
    return pixels[:, :, :-1]


def check_unit_floats(values: np.ndarray, what: str, hint: str) -> None:
    """ValueError naming `what` unless the float array holds finite values in [0, 1]."""
    if not np.isfinite(values).all():
        raise ValueError(f"{what} has NaN or infinite values; {hint}")
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(f"{what} has values in {low:g}..{high:g}, not in [0, 1]; {hint}")


def _as_uint8(pixels: np.ndarray, name: str, source: str) -> np.ndarray:
    """Pixels of a known range scaled to uint8 0-255 (see `rgb_pixels`)."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == np.bool_:
        return pixels.astype(np.uint8) * 255
    if pixels.dtype == np.uint16:
        # 0..65535 -> 0..255, rounded: x / 257 (65535 = 255 * 257)
        return ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(pixels.dtype, np.floating):
        check_unit_floats(
            pixels, f"{name}: {source}", "for 0-255 floats pass x.round().astype(np.uint8)"
        )
        return np.round(pixels * 255.0).astype(np.uint8)
    raise ValueError(
        f"{name}: {source} has {pixels.dtype} pixels, whose range is unknown; give uint8 "
        "(0-255), uint16 (0-65535), bool or float (0-1) pixels, e.g. x.astype(np.uint8)"
    )


def rgb_pixels(pixels: np.ndarray, name: str, source: str = "the array") -> np.ndarray:
    """(H, W) or (H, W, C) pixels -> (H, W, 3) uint8 RGB, or a ValueError naming `name`.

    C is 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA); an alpha channel must be
    fully opaque. Ranges by dtype: uint8 0-255 as is, uint16 0-65535 scaled to 0-255,
    bool False/True -> 0/255, float 0-1 scaled by 255 (finite). Any other dtype, or
    floats outside [0, 1], is refused. `source` says what the pixels came from (an
    array, a PIL mode, a file) for the messages.
    """
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]  # (H, W, 1)
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4):
        raise ValueError(
            f"{name}: an image has shape (H, W) or (H, W, C) with C in 1-4 (grey, grey + alpha, "
            f"RGB, RGBA), {source} has shape {tuple(pixels.shape)}"
        )
    if pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise ValueError(f"{name}: image is empty ({source} has shape {tuple(pixels.shape)})")
    rgb = _as_uint8(pixels, name, source)
    if rgb.shape[2] in (2, 4):
        rgb = drop_alpha(rgb, name, source)
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)  # (H, W, 3)
    return np.ascontiguousarray(rgb)


def load_rgb(path: Path, name: str = "image", size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB (`rgb_pixels`); errors name `name` and the path.

    `size` = (H, W) the annotations give the image, checked when given: masks and
    boxes are drawn in those pixels.
    """
    pixels, mode = read_image(path, name)
    rgb = rgb_pixels(pixels, name, f"{path} (mode {mode!r})")
    if size is not None and rgb.shape[:2] != tuple(size):
        raise ValueError(
            f"{name}: {path} is {rgb.shape[0]}x{rgb.shape[1]} (HxW) but its annotations say "
            f"{size[0]}x{size[1]}"
        )
    return rgb


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _numbers(value: Any) -> np.ndarray | None:
    """A flat list of json numbers as a 1-D array, or None for anything else."""
    if not isinstance(value, list) or any(isinstance(v, bool) for v in value):
        return None
    try:
        array = np.asarray(value)
    except ValueError:  # ragged nesting
        return None
    return array if array.ndim == 1 and array.dtype.kind in "iuf" else None


def _compressed_runs(text: str) -> list[int] | None:
    """The run lengths of a compressed COCO RLE string (pycocotools' rleFrString), or None.

    Each run is a little-endian series of 5-bit groups in characters offset by 48,
    0x20 marking "more groups", 0x10 in the last group the sign; from the fourth run
    on, a run is stored as its difference to the run two before it.
    """
    runs: list[int] = []
    p = 0
    while p < len(text):
        value = shift = 0
        more = True
        while more:
            if p >= len(text) or not 0 <= ord(text[p]) - 48 < 64:
                return None
            c = ord(text[p]) - 48
            value |= (c & 0x1F) << shift
            more, p, shift = bool(c & 0x20), p + 1, shift + 5
            if not more and c & 0x10:
                value |= -1 << shift
        runs.append(value + runs[-2] if len(runs) > 2 else value)
    return runs


def check_segmentation(segmentation: Any, height: int, width: int, name: str) -> None:
    """A ValueError naming `name` unless `segmentation` is a well-formed COCO segmentation.

    Polygons: a list of polygons, each an even count (>= 6) of finite coordinates; a
    shorter one is refused rather than decoded (pycocotools reads a 4-number polygon
    as a box). RLE: a dict whose `size` is the image's [height, width] and whose
    `counts` is a compressed string or a list of run lengths summing to height * width.
    """
    if isinstance(segmentation, list):
        for i, polygon in enumerate(segmentation):
            coords = _numbers(polygon)
            if coords is None:
                raise ValueError(
                    f"{name}: polygon {i} is not a flat list of x, y numbers: {_short(polygon)}"
                )
            if len(coords) < 6 or len(coords) % 2:
                raise ValueError(
                    f"{name}: polygon {i} has {len(coords)} numbers; a polygon is an even "
                    "count of at least 6 (3 x, y points)"
                )
            if not np.isfinite(coords).all():
                raise ValueError(f"{name}: polygon {i} has non-finite coordinates")
        return
    if not isinstance(segmentation, dict):
        raise ValueError(
            f"{name}: a segmentation is a polygon list or an RLE dict with 'size' and "
            f"'counts', got {type(segmentation).__name__}"
        )
    if "size" not in segmentation or "counts" not in segmentation:
        raise ValueError(
            f"{name}: an RLE segmentation needs 'size' and 'counts', got keys "
            f"{sorted(segmentation)}"
        )
    size, counts = segmentation["size"], segmentation["counts"]
    if not isinstance(size, list) or size != [height, width]:
        raise ValueError(
            f"{name}: RLE size {_short(size)} is not the image's [height, width] = "
            f"[{height}, {width}]"
        )
    if isinstance(counts, (str, bytes)):
        runs = _compressed_runs(counts.decode("latin-1") if isinstance(counts, bytes) else counts)
        if runs is None:
            raise ValueError(f"{name}: RLE counts {_short(counts)} are not a compressed RLE")
    elif isinstance(counts, list):
        runs = counts
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in runs):
            raise ValueError(f"{name}: RLE counts must be ints, got {_short(counts)}")
    else:
        raise ValueError(
            f"{name}: RLE counts must be a compressed string or a list of run lengths, "
            f"got {_short(counts)}"
        )
    if any(c < 0 for c in runs) or sum(runs) != height * width:
        raise ValueError(
            f"{name}: RLE run lengths sum to {sum(runs)} (min {min(runs, default=0)}), but the "
            f"image has {height} * {width} = {height * width} pixels"
        )


def decode_segmentation(
    segmentation: Any, height: int, width: int, name: str = "segmentation"
) -> np.ndarray:
    """Decode one COCO segmentation (polygons, RLE or compressed RLE) to (H, W) bool.

    It is checked first (`check_segmentation`); errors name `name`.
    """
    from pycocotools import mask as mask_utils

    check_segmentation(segmentation, height, width, name)
    if isinstance(segmentation, list):  # polygons: [[x0, y0, x1, y1, ...], ...]
        if not segmentation:
            return np.zeros((height, width), bool)
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation["counts"], list):  # uncompressed RLE (crowd regions)
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        counts = segmentation["counts"]
        counts = counts.encode("ascii") if isinstance(counts, str) else counts
        rle = {"size": [height, width], "counts": counts}
    try:
        mask = mask_utils.decode(rle)
    except (ValueError, TypeError, UnicodeError) as err:
        raise ValueError(f"{name}: the RLE counts do not decode ({err})") from err
    if mask.ndim == 3:  # merge returns one RLE, frPyObjects on one polygon list may not
        mask = mask.any(axis=2)
    if mask.shape != (height, width):
        raise ValueError(
            f"{name}: segmentation decodes to {mask.shape}, but the image is {(height, width)}"
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
        """The image as (H, W, 3) uint8 RGB, of the size the annotations give."""
        return load_rgb(self.image_path, f"image_id {self.image_id}", (self.height, self.width))

    def load_mask(self) -> np.ndarray:
        """The merged category mask as (H, W) bool (decoded on each call)."""
        mask = np.zeros((self.height, self.width), bool)
        for k, seg in enumerate(self.segmentations):
            name = f"image_id {self.image_id} ({self.image_path}), {self.category} instance {k}"
            mask |= decode_segmentation(seg, self.height, self.width, name)
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
        """The image as (H, W, 3) uint8 RGB, of the size the annotations give."""
        name = f"image_id {self.image_id} (region {self.region_id})"
        return load_rgb(self.image_path, name, (self.height, self.width))


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
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} file {path} is not UTF-8 text (json): {exc}") from exc


def require(record: dict, key: str, where: str):
    """record[key], or a ValueError naming the field and where the record came from."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a json object, got {type(record).__name__}")
    if key not in record:
        raise ValueError(f"{where}: missing field {key!r}")
    return record[key]


def require_int(record: dict, key: str, where: str) -> int:
    """record[key] as an int (an integral json number), with `require`'s errors."""
    value = require(record, key, where)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not float(value).is_integer()
    ):
        raise ValueError(f"{where}: field {key!r} must be an integer, got {_short(value)}")
    return int(value)


def require_number(record: dict, key: str, where: str) -> float:
    """record[key] as a finite float, with `require`'s errors."""
    value = require(record, key, where)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: field {key!r} must be a finite number, got {_short(value)}")
    return float(value)


def require_list(record: dict, key: str, where: str) -> list:
    """record[key], which must be a json list, with `require`'s errors."""
    value = require(record, key, where)
    if not isinstance(value, list):
        raise ValueError(f"{where}: {key!r} must be a json list, got {type(value).__name__}")
    return value


def require_image_size(record: dict, where: str) -> tuple[int, int]:
    """(height, width) of an image entry: integers >= 1, with `require`'s errors."""
    height, width = require_int(record, "height", where), require_int(record, "width", where)
    if height < 1 or width < 1:
        raise ValueError(f"{where}: image size {height}x{width} (HxW) is empty")
    return height, width


class RecordPools:
    """What a dataset reader gives the tasks: records grouped per category.

    A reader sets `source` (the file it read), `pools` (category -> records) and
    `categories` (the names with a pool, in the reader's order).
    """

    source: Path
    pools: dict[str, list]
    categories: list[str]

    def __len__(self) -> int:
        return sum(len(p) for p in self.pools.values())

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.source)!r}: {len(self)} records, "
            f"{len(self.categories)} categories)"
        )
