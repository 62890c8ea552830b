"""`unicl demo`: the whole project in one command, and the pictures it leaves behind.

DESIGN.md "The embedded default" / issue 8: on a fresh install the demo renders
the shapes world, trains the tiny default (or reuses a finished run), evaluates it
on the fixed evaluation episodes and writes a results folder:

    grid.png        demonstrations | query | prediction | ground truth, one row per
                    episode, seen and unseen categories
    captions.md     a sample of region captions next to the reference
    metrics.md/.json  the evaluation table (unicl/evaluate.py)
    loss.png        the training loss curves

Every step is reused when its output already exists (world, token cache, run,
evaluation), so a second `unicl demo` only redraws the figures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: side of one grid cell in pixels
CELL = 112
#: overlay colour of masks in the grid (RGB) and its opacity
MASK_RGB = np.array([255, 40, 40], np.float32)
MASK_ALPHA = 0.55


@dataclasses.dataclass
class GridRow:
    """One episode shown in the grid."""

    category: str
    unseen: bool
    demos: list[tuple[np.ndarray, np.ndarray]]  # (H, W, 3) uint8 image, (H, W) bool mask
    query: np.ndarray  # (H, W, 3) uint8
    prediction: np.ndarray  # (H, W) bool
    truth: np.ndarray  # (H, W) bool
    iou: float | None = None


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`image` with `mask` tinted red, as (H, W, 3) uint8."""
    out = image.astype(np.float32)  # (H, W, 3)
    tint = (1 - MASK_ALPHA) * out[mask] + MASK_ALPHA * MASK_RGB  # (N, 3)
    out[mask] = tint
    return out.round().clip(0, 255).astype(np.uint8)


def _cell(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array).convert("RGB").resize((CELL, CELL), Image.Resampling.BILINEAR)


def _mask_cell(mask: np.ndarray) -> Image.Image:
    return _cell(mask.astype(np.uint8) * 255)


def render_grid(rows: Sequence[GridRow], path: str | Path) -> Path:
    """Draw `rows` as a PNG grid: k demo overlays, query, prediction, ground truth.

    Rows may have different numbers of demonstrations; the grid is as wide as the
    row with the most, shorter rows leave those cells blank.
    """
    if not rows:
        raise ValueError("render_grid: no rows to draw")
    font = ImageFont.load_default()
    k = max(len(r.demos) for r in rows)
    label_w, head_h, pad = 110, 18, 4
    cols = k + 3
    width = label_w + cols * (CELL + pad)
    height = head_h + len(rows) * (CELL + pad)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    heads = [f"demo {i + 1}" for i in range(k)] + ["query", "prediction", "ground truth"]
    for c, text in enumerate(heads):
        draw.text((label_w + c * (CELL + pad) + 4, 3), text, fill="black", font=font)
    for r, row in enumerate(rows):
        y = head_h + r * (CELL + pad)
        split = "unseen" if row.unseen else "seen"
        draw.text((4, y + 4), row.category, fill="black", font=font)
        draw.text((4, y + 18), f"({split})", fill="firebrick" if row.unseen else "gray", font=font)
        if row.iou is not None:
            draw.text((4, y + 32), f"IoU {row.iou:.2f}", fill="black", font=font)
        for c, (image, mask) in enumerate(row.demos):
            canvas.paste(_cell(overlay(image, mask)), (label_w + c * (CELL + pad), y))
        x = label_w + k * (CELL + pad)
        canvas.paste(_cell(row.query), (x, y))
        canvas.paste(_cell(overlay(row.query, row.prediction)), (x + CELL + pad, y))
        canvas.paste(_cell(overlay(row.query, row.truth)), (x + 2 * (CELL + pad), y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
