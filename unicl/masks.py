"""Masks as images: how unicl draws a binary mask in grey levels and reads one back.

The paper (arXiv 2312.02520) encodes a segmentation mask with the image tokenizer,
as an image. unicl draws a mask 0 (background) / 255 (foreground) in all three
channels; a grey map that comes back (a decoded mask image, a resized one, the
mean of several answers) is foreground where its level is above MASK_THRESHOLD.
The paper does not say how a decoded mask image becomes a binary mask: the
threshold is our choice. Nothing here needs torch, so the task plugins can use it.
"""

from __future__ import annotations

import numpy as np

#: grey level (0-255) above which a mask image is foreground
MASK_THRESHOLD = 127


def render_mask(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (H, W, 3) uint8 image: 255 foreground, 0 background."""
    return np.repeat((mask.astype(np.uint8) * 255)[:, :, None], 3, axis=2)


def threshold_mask(grey) -> np.ndarray:
    """Grey levels 0-255 (any shape) -> bool of the same shape: level > MASK_THRESHOLD."""
    return np.asarray(grey) > MASK_THRESHOLD
