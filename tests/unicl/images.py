"""Small test images: deterministic random RGB pixels and a rectangular mask."""

import numpy as np


def rgb(h: int, w: int, seed: int) -> np.ndarray:
    """(h, w, 3) uint8 random pixels, the same for the same seed."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def box_mask(h: int, w: int) -> np.ndarray:
    """(h, w) bool with one foreground rectangle (rows h/4..h/2, columns w/3..w/2+2)."""
    mask = np.zeros((h, w), bool)
    mask[h // 4 : h // 2, w // 3 : w // 2 + 2] = True
    return mask
