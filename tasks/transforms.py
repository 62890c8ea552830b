"""Square crops for episodes: the paper's object-centred crop and a random fallback.

In the paper (arXiv 2312.02520, Table 1), object-centred square crops around the
target help segmentation a lot (31.82 -> 45.04 MIoU), because small objects
otherwise vanish when a whole image is resized to the model's resolution. These
functions work on crop *boxes*, so that an image, its mask and any boxes are
cropped the same way and a predicted mask can be pasted back into the original
image (`uncrop_mask`). Boxes are `(x0, y0, x1, y1)` in pixels; a crop box is a
square in integer pixels that may extend past the image, where it is padded.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

CropBox = tuple[int, int, int, int]


def object_centred_crop_box(
    box,
    height: int,
    width: int,
    rng: np.random.Generator | None = None,
    context: tuple[float, float] = (1.5, 2.5),
    jitter: float = 0.1,
    min_side: int = 32,
) -> CropBox:
    """A square crop around an object box.

    The side is the box's longer side times a context factor drawn from
    `context` (at least `min_side`, at most the image's longer side); the centre
    is the box centre moved by up to `jitter` of the side. The crop is then
    shifted to lie inside the image when it fits; a crop wider than the image
    keeps its centre and is padded. Without `rng` it is deterministic (middle
    context factor, no jitter), which is what evaluation uses.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box must have x1 > x0 and y1 > y0, got {box}")
    factor = rng.uniform(*context) if rng is not None else sum(context) / 2
    side = max(x1 - x0, y1 - y0) * factor
    side = int(round(min(max(side, min_side), max(height, width))))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if rng is not None and jitter > 0:
        cx += rng.uniform(-jitter, jitter) * side
        cy += rng.uniform(-jitter, jitter) * side
    return _square_at(cx, cy, side, height, width)


def random_square_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.5, 1.0),
) -> CropBox:
    """A random square inside the image whose side is `scale` times the shorter side."""
    side = max(1, int(round(min(height, width) * rng.uniform(*scale))))
    x0 = int(rng.integers(0, width - side + 1))
    y0 = int(rng.integers(0, height - side + 1))
    return (x0, y0, x0 + side, y0 + side)


def full_square_crop_box(height: int, width: int) -> CropBox:
    """The whole image padded to a centred square (no content lost)."""
    return _square_at(width / 2, height / 2, max(height, width), height, width)


def _square_at(cx: float, cy: float, side: int, height: int, width: int) -> CropBox:
    """A side x side square centred near (cx, cy), moved inside the image on each axis it fits."""
    out = []
    for c, extent in ((cx, width), (cy, height)):
        lo = int(round(c - side / 2))
        if side <= extent:
            lo = min(max(lo, 0), extent - side)
        else:  # wider than the image: centre the image in the crop
            lo = -((side - extent) // 2)
        out.append(lo)
    return (out[0], out[1], out[0] + side, out[1] + side)


def crop_and_resize(
    array: np.ndarray, crop_box: CropBox, size: int, interpolation: str = "bilinear", fill=0
):
    """Cut `crop_box` out of an (H, W[, C]) array, padding with `fill`, and resize to size x size.

    Use "nearest" for masks and label maps (bool masks stay bool), "bilinear" or
    "bicubic" for images. Returns an array of the input's dtype.
    """
    x0, y0, x1, y1 = crop_box
    h, w = array.shape[:2]
    is_bool = array.dtype == bool
    src = array.astype(np.uint8) if is_bool else array
    canvas = np.full((y1 - y0, x1 - x0, *src.shape[2:]), fill, dtype=src.dtype)  # (side, side[, C])
    # the part of the crop that overlaps the image
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if ix1 > ix0 and iy1 > iy0:
        canvas[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = src[iy0:iy1, ix0:ix1]
    out = _resize(canvas, size, size, interpolation)
    return out.astype(bool) if is_bool else out


def uncrop_mask(mask: np.ndarray, crop_box: CropBox, height: int, width: int) -> np.ndarray:
    """Undo `crop_and_resize` for a (s, s) mask: an (H, W) bool mask of the original image."""
    x0, y0, x1, y1 = crop_box
    side_w, side_h = x1 - x0, y1 - y0
    full = _resize(np.asarray(mask).astype(np.uint8), side_w, side_h, "nearest")  # (side, side)
    out = np.zeros((height, width), bool)
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if ix1 > ix0 and iy1 > iy0:
        out[iy0:iy1, ix0:ix1] = full[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] > 0
    return out


def box_to_crop(box, crop_box: CropBox, size: int) -> tuple[float, float, float, float]:
    """Map a box from image pixels to the size x size crop, clipped to the crop."""
    x0, y0, x1, y1 = crop_box
    sx, sy = size / (x1 - x0), size / (y1 - y0)
    bx0, by0, bx1, by1 = (float(v) for v in box)
    out = ((bx0 - x0) * sx, (by0 - y0) * sy, (bx1 - x0) * sx, (by1 - y0) * sy)
    return tuple(float(min(max(v, 0.0), size)) for v in out)


def box_from_crop(box, crop_box: CropBox, size: int) -> tuple[float, float, float, float]:
    """Inverse of `box_to_crop` (without the clipping): crop pixels back to image pixels."""
    x0, y0, x1, y1 = crop_box
    sx, sy = (x1 - x0) / size, (y1 - y0) / size
    bx0, by0, bx1, by1 = (float(v) for v in box)
    return (bx0 * sx + x0, by0 * sy + y0, bx1 * sx + x0, by1 * sy + y0)


_FILTERS = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "area": Image.BOX,
}


def _resize(array: np.ndarray, width: int, height: int, interpolation: str) -> np.ndarray:
    if interpolation not in _FILTERS:
        raise ValueError(f"interpolation must be one of {list(_FILTERS)}, got {interpolation!r}")
    if array.shape[1] == width and array.shape[0] == height:
        return array.copy()
    if array.dtype == np.uint8 and (array.ndim == 2 or array.shape[2] in (3, 4)):
        return np.asarray(Image.fromarray(array).resize((width, height), _FILTERS[interpolation]))
    # other dtypes / channel counts: resize each channel as a float image
    chans = array[..., None] if array.ndim == 2 else array
    out = np.stack(
        [
            np.asarray(
                Image.fromarray(chans[..., c].astype(np.float32)).resize(
                    (width, height), _FILTERS[interpolation]
                )
            )
            for c in range(chans.shape[2])
        ],
        axis=-1,
    )
    out = out[..., 0] if array.ndim == 2 else out
    return out.astype(array.dtype)
