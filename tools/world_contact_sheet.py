"""Draw a contact sheet of shapes-world images with their masks and region phrases.

    python tools/world_contact_sheet.py WORLD_DIR docs/images/world_contact_sheet.png --n 12

Each panel shows a val image, then the same image with every annotated
instance's mask outlined and numbered, and the numbered region phrases below.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from unicl.tasks.records import decode_segmentation, load_rgb

PALETTE = [(255, 0, 0), (0, 255, 0), (0, 90, 255), (255, 0, 255), (255, 255, 0), (0, 255, 255)]
SCALE, TEXT_H, WRAP = 2, 96, 52


def _panel(rgb: np.ndarray, masks: list[np.ndarray], lines: list[str]) -> Image.Image:
    """Image | image with numbered mask outlines, phrases below."""
    h, w = rgb.shape[:2]
    big = np.kron(rgb, np.ones((SCALE, SCALE, 1), np.uint8))  # (2H, 2W, 3) nearest upscale
    over = (big // 2 + 100).astype(np.uint8)
    for j, m in enumerate(masks):
        mb = np.kron(m, np.ones((SCALE, SCALE), bool))
        edge = mb & ~(
            np.roll(mb, 1, 0) & np.roll(mb, -1, 0) & np.roll(mb, 1, 1) & np.roll(mb, -1, 1)
        )
        over[mb] = (over[mb] * 0.6 + np.array(PALETTE[j % 6]) * 0.4).astype(np.uint8)
        over[edge] = PALETTE[j % 6]
    panel = Image.new("RGB", (2 * w * SCALE + 6, h * SCALE + TEXT_H), "white")
    panel.paste(Image.fromarray(big), (0, 0))
    panel.paste(Image.fromarray(over), (w * SCALE + 6, 0))
    draw = ImageDraw.Draw(panel)
    font = ImageFont.load_default(size=11)
    for j, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        x, y = w * SCALE + 6 + xs.mean() * SCALE, ys.mean() * SCALE
        draw.text((x - 3, y - 6), str(j + 1), fill="black", font=font)
    y = h * SCALE + 4
    for line in lines:
        for part in textwrap.wrap(line, WRAP)[:2]:
            draw.text((4, y), part, fill="black", font=font)
            y += 13
    return panel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("world")
    parser.add_argument("out")
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--cols", type=int, default=3)
    parser.add_argument("--split", default="val")
    args = parser.parse_args()
    root = Path(args.world)
    coco = json.loads((root / "annotations" / f"instances_{args.split}.json").read_text())
    regions = json.loads(
        (root / "annotations" / f"region_descriptions_{args.split}.json").read_text()
    )
    names = {c["id"]: c["name"] for c in coco["categories"]}
    phrase = {r["region_id"]: r["phrase"] for img in regions for r in img["regions"]}
    by_image: dict[int, list] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    images = [im for im in coco["images"] if im["id"] in by_image][: args.n]
    panels = []
    for im in images:
        anns = by_image[im["id"]][:6]
        masks = [decode_segmentation(a["segmentation"], im["height"], im["width"]) for a in anns]
        lines = [
            f"{j + 1}. [{names[a['category_id']]}] {phrase[a['id']]}" for j, a in enumerate(anns)
        ]
        panels.append(
            _panel(load_rgb(root / "images" / args.split / im["file_name"]), masks, lines)
        )
    pw, ph = panels[0].size
    rows = (len(panels) + args.cols - 1) // args.cols
    sheet = Image.new("RGB", (args.cols * (pw + 12), rows * (ph + 12)), (235, 235, 235))
    for k, panel in enumerate(panels):
        sheet.paste(panel, ((k % args.cols) * (pw + 12) + 6, (k // args.cols) * (ph + 12) + 6))
    sheet.save(args.out, optimize=True)


if __name__ == "__main__":
    main()
