"""Masks as images: how unicl draws a binary mask in grey levels and reads one back.

The paper (arXiv 2312.02520) encodes a segmentation mask with the image tokenizer,
as an image. unicl draws a mask 0 (background) / 255 (foreground) in all three
channels; a grey map that comes back (a decoded mask image, a resized one, the
mean of several answers, the expected foreground under a code distribution) is
foreground where its level is above a threshold. The paper does not say how a
decoded mask image becomes a binary mask: the threshold is our choice, one of

- a fixed level: MASK_THRESHOLD (127, half way) by default;
- "expected_iou": the level that maximises the map's expected IoU (`expected_iou_level`),
  read per map. An uncertain model's foreground probabilities stay under one half at
  the object's edges and on thin parts, and half way then cuts its mask down to a small
  blob; the IoU-optimal threshold of calibrated probabilities is below one half
  whenever the achievable IoU is below one (for F1, whose optimum orders masks the same
  way, it is half the optimal F1: Lipton, Elkan & Narayanaswamy, arXiv 1402.1892).

Before the cut a map can be refined against the query image (`refine_map`): a colour
guided filter (He, Sun & Tang, "Guided Image Filtering", ECCV 2010) fits the map, in
every window, as a linear function of the image's colour, so the answer's edges move
to the image's edges and a colour the model marked as foreground in most of a window
is marked everywhere in it. The model's maps come from a 16 x 16 grid of cells; the
image has every pixel.

Nothing here needs torch, so the task plugins can use it.
"""

from __future__ import annotations

import numpy as np

#: grey level (0-255) above which a mask image is foreground
MASK_THRESHOLD = 127
#: the names `mask_threshold` accepts besides a level
ADAPTIVE_THRESHOLDS = ("expected_iou",)


def render_mask(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (H, W, 3) uint8 image: 255 foreground, 0 background."""
    return np.repeat((mask.astype(np.uint8) * 255)[:, :, None], 3, axis=2)


def threshold_mask(grey, level: float = MASK_THRESHOLD) -> np.ndarray:
    """Grey levels 0-255 (any shape) -> bool of the same shape: grey > level."""
    return np.asarray(grey) > level


def expected_iou_level(grey) -> float:
    """The grey level whose mask (grey > level) has the largest expected IoU.

    `grey / 255` is read as each pixel's foreground probability, pixels independent.
    Keeping the k most probable pixels gives expected intersection sum(p_1..p_k) and
    expected union k + sum(p_k+1..p_n); their ratio (the expected IoU to first order)
    is maximised over k. Pixels of equal level are kept or dropped together. A map with
    no foreground mass gives 255: an empty mask.
    """
    p = np.asarray(grey, np.float64).ravel() / 255.0
    if p.size == 0 or not np.any(p > 0):
        return 255.0
    levels, counts = np.unique(p, return_counts=True)  # ascending
    levels, counts = levels[::-1], counts[::-1]  # most probable first
    kept = np.cumsum(counts)  # pixels kept when the cut is at each level
    inter = np.cumsum(levels * counts)
    union = kept + (inter[-1] - inter)
    best = int(np.argmax(inter / union))
    # the mask is grey >= levels[best]: cut half way to the next lower level
    below = levels[best + 1] if best + 1 < levels.size else levels[best] - 1.0 / 255.0
    return float(255.0 * (levels[best] + below) / 2.0)


def mask_level(grey, threshold: float | str) -> float:
    """The grey level (0-255) a map is cut at: `threshold` in (0, 1), or "expected_iou"."""
    if threshold == "expected_iou":
        return expected_iou_level(grey)
    return 255.0 * float(threshold)


#: the names `mask_refine` accepts
MASK_REFINEMENTS = ("none", "guided")


def box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean of (H, W, ...) over the (2 radius + 1)^2 window around each pixel.

    Near the border the window is the part inside the image (He et al.'s convention).
    """
    x = np.asarray(x, np.float64)
    height, width = x.shape[:2]
    pad = ((1, 0), (1, 0)) + ((0, 0),) * (x.ndim - 2)
    table = np.pad(x, pad).cumsum(0).cumsum(1)  # summed-area table, (H + 1, W + 1, ...)
    y0 = np.clip(np.arange(height) - radius, 0, height)
    y1 = np.clip(np.arange(height) + radius + 1, 0, height)
    x0 = np.clip(np.arange(width) - radius, 0, width)
    x1 = np.clip(np.arange(width) + radius + 1, 0, width)
    sums = table[y1][:, x1] - table[y0][:, x1] - table[y1][:, x0] + table[y0][:, x0]
    count = ((y1 - y0)[:, None] * (x1 - x0)[None, :]).astype(np.float64)
    return sums / count.reshape(count.shape + (1,) * (x.ndim - 2))


def guided_filter(
    image: np.ndarray, values: np.ndarray, radius: int, eps: float, step: int = 1
) -> np.ndarray:
    """He et al.'s colour guided filter of `values` (H, W) by `image` (H, W, C) in [0, 1].

    In each window the output is a linear function a . colour + b of the image, fitted to
    `values` by ridge regression (`eps` the ridge, in squared colour units); each pixel
    averages the fits of the windows that hold it. The output is linear in `values`, so
    filtering the mean of several maps equals the mean of their filtered maps.

    `step` > 1 is the fast guided filter (He & Sun, arXiv 1505.00996): the fits are made on
    a grid `step` times coarser (means over step x step blocks, radius / step) and their
    coefficients, which vary slowly, are interpolated back; the output still takes every
    pixel's own colour, so the edges stay the image's.
    """
    image = np.asarray(image, np.float64)
    values = np.asarray(values, np.float64)
    if image.ndim != 3 or image.shape[:2] != values.shape:
        raise ValueError(
            f"guided_filter: image {image.shape} must be (H, W, C) with values' {values.shape}"
        )
    if step > 1:
        small_i, small_v = _block_mean(image, step), _block_mean(values, step)
        a, b = _guided_coefficients(small_i, small_v, max(1, round(radius / step)), eps)
        height, width = values.shape
        a = np.stack([_upsample(a[..., c], step, height, width) for c in range(a.shape[-1])], -1)
        return (a * image).sum(-1) + _upsample(b, step, height, width)
    a, b = _guided_coefficients(image, values, radius, eps)
    return (a * image).sum(-1) + b


def _guided_coefficients(image, values, radius: int, eps: float):
    """The window-averaged fit (a (H, W, C), b (H, W)) of the guided filter."""
    mean_i = box_mean(image, radius)  # (H, W, C)
    mean_v = box_mean(values, radius)  # (H, W)
    cov_iv = box_mean(image * values[..., None], radius) - mean_i * mean_v[..., None]
    outer = image[..., :, None] * image[..., None, :]
    var_i = box_mean(outer, radius) - mean_i[..., :, None] * mean_i[..., None, :]  # (H, W, C, C)
    ridge = eps * np.eye(image.shape[-1])
    a = np.linalg.solve(var_i + ridge, cov_iv[..., None])[..., 0]  # (H, W, C)
    b = mean_v - (a * mean_i).sum(-1)
    return box_mean(a, radius), box_mean(b, radius)


def _block_mean(x: np.ndarray, step: int) -> np.ndarray:
    """Means over step x step blocks of (H, W, ...); the last blocks repeat the edge."""
    height, width = x.shape[:2]
    rows, cols = -(-height // step), -(-width // step)
    pad = ((0, rows * step - height), (0, cols * step - width)) + ((0, 0),) * (x.ndim - 2)
    x = np.pad(x, pad, mode="edge")
    return x.reshape(rows, step, cols, step, *x.shape[2:]).mean(axis=(1, 3))


def _upsample(x: np.ndarray, step: int, height: int, width: int) -> np.ndarray:
    """Block means (h, w) of `_block_mean` -> (height, width), bilinear between block centres."""
    from PIL import Image  # (not tasks/transforms.py's resize: this module is a layer below it)

    rows, cols = x.shape
    big = Image.fromarray(np.ascontiguousarray(x, np.float32), mode="F").resize(
        (cols * step, rows * step), Image.Resampling.BILINEAR
    )
    return np.asarray(big, np.float64)[:height, :width]


#: the fast guided filter's coarse windows have a radius of about this many blocks
REFINE_BLOCKS_PER_RADIUS = 8


def refine_map(
    grey: np.ndarray, image: np.ndarray, radius: int, eps: float, step: int | None = None
) -> np.ndarray:
    """A grey map (H, W, 0-255) snapped to `image` (H, W[, C], 0-255): `guided_filter`.

    Windows wider than REFINE_BLOCKS_PER_RADIUS pixels are fitted on a coarser grid (the
    fast guided filter, step radius // REFINE_BLOCKS_PER_RADIUS, unless `step` is given:
    1 is the exact filter), so the cost grows with the image's pixels, not with the window.
    The result is clipped to 0-255 (float32). A grey image guides by its one channel.
    """
    image = np.asarray(image, np.float64) / 255.0
    if image.ndim == 2:
        image = image[..., None]
    image = image[..., :3]  # an alpha channel is opaque (unicl/inputs.py)
    if step is None:
        step = max(1, radius // REFINE_BLOCKS_PER_RADIUS)
    out = 255.0 * guided_filter(image, np.asarray(grey, np.float64) / 255.0, radius, eps, step)
    return np.clip(out, 0.0, 255.0).astype(np.float32)


def check_threshold(value, owner: str) -> float | str:
    """Validate a `mask_threshold` option: a number in (0, 1) or "expected_iou"."""
    if isinstance(value, str):
        if value in ADAPTIVE_THRESHOLDS:
            return value
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1:
        return float(value)
    raise ValueError(
        f"{owner}: mask_threshold must be a foreground probability in (0, 1) or one of "
        f"{ADAPTIVE_THRESHOLDS}, got {value!r}"
    )
