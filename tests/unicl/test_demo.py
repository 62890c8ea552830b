"""The demo's pictures (unicl/demo.py)."""

import numpy as np
from PIL import Image

from unicl.demo import CELL, GridRow, overlay, render_grid


def _row(k, unseen=False):
    rng = np.random.default_rng(k)
    img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    mask = np.zeros((40, 50), bool)
    mask[5:20, 10:30] = True
    return GridRow("star", unseen, [(img, mask)] * k, img, mask, ~mask, iou=0.5)


def test_overlay_tints_only_the_mask():
    img = np.full((4, 4, 3), 100, np.uint8)
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True
    out = overlay(img, mask)
    assert (out[1:, :] == 100).all() and out[0, 0, 0] > 100 and out[0, 0, 1] < 100


def test_grid_size(tmp_path):
    path = render_grid([_row(3), _row(1, unseen=True)], tmp_path / "grid.png")
    with Image.open(path) as im:
        # widest row: 3 demos + query + prediction + truth
        assert im.width > 6 * CELL and im.height > 2 * CELL
