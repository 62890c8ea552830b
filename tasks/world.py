"""The synthetic shapes world: a COCO + Visual Genome stand-in rendered from a seed.

docs/data.md "The shapes world": MS-COCO, Visual Genome and pretrained VQ-GAN
weights cannot be downloaded everywhere, so `unicl make-world` renders a small
dataset in the *real* file formats, and the same readers (tasks/coco.py,
tasks/vg.py) serve it and real data alike. Layout under the output directory:

    images/{train,val}/<image_id>.png
    annotations/instances_{train,val}.json            COCO instances (RLE masks)
    annotations/region_descriptions_{train,val}.json  Visual Genome regions
    manifest.json                                     categories, seen/unseen split, counts

Each image has a muted textured / gradient / noise background and 1-4 shape
categories with one or more instances each, in named colours, at COCO small /
medium / large areas, rotated, overlapping in a random depth order. Masks,
boxes and areas are of the *visible* pixels after occlusion. Unseen categories
never appear in any train file. Every image is rendered from its own seed
(seed, split, index), so output is byte-identical for identical arguments
whatever the number of worker processes.
"""

from __future__ import annotations

import colorsys
import dataclasses
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from unicl.ownership import claim
from unicl.tasks.records import read_json
from unicl.tasks.world_phrases import InstanceView, describe
from unicl.tasks.world_shapes import (
    CATEGORIES,
    CATEGORY_BY_NAME,
    COLOURS,
    DEFAULT_UNSEEN,
    check_category_names,
)

FORMAT_VERSION = 1
SPLITS = ("train", "val")
VAL_ID_OFFSET = 1_000_000  # val image ids start here so ids are unique across splits
SMALL_AREA, LARGE_AREA = 32**2, 96**2  # COCO's small / medium / large thresholds


@dataclasses.dataclass(frozen=True)
class WorldSpec:
    """Everything that determines a world's bytes (written to its manifest)."""

    seed: int = 0
    images: int = 4000  # train images
    val_images: int = 500
    size: int = 128  # square image side in pixels
    unseen: tuple[str, ...] = DEFAULT_UNSEEN

    def __post_init__(self) -> None:
        for field in ("images", "val_images"):
            n = getattr(self, field)
            if not isinstance(n, int) or not 0 <= n < VAL_ID_OFFSET:
                raise ValueError(f"{field} must be an int in [0, {VAL_ID_OFFSET}), got {n!r}")
        if not isinstance(self.size, int) or self.size < 32:
            raise ValueError(f"size must be an int >= 32 pixels, got {self.size!r}")
        check_category_names(self.unseen, "unseen")
        if len(set(self.unseen)) >= len(CATEGORIES):
            raise ValueError("unseen: at least one category must stay seen")

    @property
    def seen(self) -> tuple[str, ...]:
        return tuple(c.name for c in CATEGORIES if c.name not in self.unseen)

    def count(self, split: str) -> int:
        return self.images if split == "train" else self.val_images


# ----------------------------------------------------------------------------- rendering
def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    """A low-saturation mid-tone RGB colour (backgrounds stay away from the palette)."""
    h, s, v = rng.random(), rng.uniform(0.04, 0.3), rng.uniform(0.38, 0.68)
    return np.array(colorsys.hsv_to_rgb(h, s, v)) * 255.0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(S, S, 3) float32 background: gradient, smooth noise, stripes, checks or grain."""
    a, b = _muted_colour(rng).astype(np.float32), _muted_colour(rng).astype(np.float32)
    ramp = np.arange(size, dtype=np.float32) / size
    yy, xx = ramp[:, None], ramp[None, :]  # (S, 1), (1, S): broadcast to (S, S)
    kind = int(rng.integers(5))
    if kind == 0:  # linear gradient at a random angle
        ang = rng.uniform(0, 2 * np.pi)
        t = (np.cos(ang) * xx + np.sin(ang) * yy + 1.5) / 3.0
    elif kind == 1:  # smooth value noise: a coarse random grid upsampled bicubically
        cells = int(rng.integers(3, 9))
        grid = (rng.random((cells, cells)) * 255).astype(np.uint8)
        up = Image.fromarray(grid).resize((size, size), Image.BICUBIC)
        t = np.asarray(up, np.float32) / 255.0
    elif kind == 2:  # soft stripes
        ang, freq = rng.uniform(0, np.pi), rng.uniform(3, 12)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(ang) * xx + np.sin(ang) * yy))
    elif kind == 3:  # low-contrast checks
        n = int(rng.integers(3, 10))
        t = ((np.floor(xx * n) + np.floor(yy * n)) % 2) * 0.8 + 0.1
    else:  # flat with grain
        t = np.zeros((1, 1), np.float32)
    img = a + (b - a) * np.broadcast_to(t, (size, size))[..., None]  # (S, S, 3)
    grain = rng.uniform(2, 9)
    img += rng.standard_normal((size, size, 3), dtype=np.float32) * grain  # sensor-like grain
    return img.astype(np.float32)


def _target_area(rng: np.random.Generator, size: int) -> float:
    """Draw an instance area spanning COCO small / medium / large (log-uniform in each)."""
    image_area = size * size
    hi_medium = min(LARGE_AREA, 0.56 * image_area)
    large_ok = LARGE_AREA < 0.7 * image_area
    u = rng.random()
    if u < 0.35:
        lo, hi = 48.0, min(SMALL_AREA, 0.1 * image_area)
    elif u < 0.88 or not large_ok:
        lo, hi = SMALL_AREA, hi_medium
    else:
        lo, hi = LARGE_AREA, 0.7 * image_area
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _unit_area(ops) -> float:
    """Area of a shape in unit coordinates (rasterised on a 64 x 64 grid over [-1.25, 1.25]^2)."""
    n, half = 64, 1.25
    canvas = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(canvas)
    for pts, fill in ops:
        q = (pts + half) * (n / (2 * half))
        draw.polygon([tuple(p) for p in q], fill=1 if fill else 0)
    return float(np.asarray(canvas).sum()) * (2 * half / n) ** 2


def _rasterise(ops, scale: float, angle: float, cx: float, cy: float, size: int) -> np.ndarray:
    """Draw a shape's ops rotated, scaled and centred at (cx, cy): (S, S) bool."""
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for pts, fill in ops:
        q = pts @ rot.T * scale + np.array([cx, cy])  # (N, 2) pixels
        draw.polygon([tuple(p) for p in q], fill=1 if fill else 0)
    return np.asarray(canvas).astype(bool)


def _place(rng: np.random.Generator, category: str, size: int) -> np.ndarray:
    """Render one instance of `category` at a random area, angle and position: (S, S) bool."""
    ops = CATEGORY_BY_NAME[category].build(rng)
    scale = np.sqrt(_target_area(rng, size) / _unit_area(ops))
    margin = min(0.6 * scale, size / 2)  # keep most of the shape in frame
    cx, cy = rng.uniform(margin, size - margin, 2)
    return _rasterise(ops, scale, rng.uniform(0, 2 * np.pi), cx, cy, size)


def _visible(full: list[np.ndarray]) -> list[np.ndarray]:
    """Visible part of each mask when later masks are drawn over earlier ones."""
    out, above = [None] * len(full), np.zeros_like(full[0])
    for i in range(len(full) - 1, -1, -1):
        out[i] = full[i] & ~above
        above |= full[i]
    return out


def _choose_categories(rng: np.random.Generator, pool: list[str]) -> list[str]:
    """1-4 distinct categories, each repeated for its instance count (at most 8 in all)."""
    k = int(rng.choice([1, 2, 3, 4], p=[0.3, 0.35, 0.25, 0.1]))
    cats = rng.choice(len(pool), size=min(k, len(pool)), replace=False)
    out = []
    for c in cats:
        out += [pool[int(c)]] * int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
    return out[:8]


def _pick_colours(rng, bg: np.ndarray, vis: list[np.ndarray], full: list[np.ndarray]) -> list[str]:
    """Palette colours far from the background under each instance and from touching instances."""
    names = list(COLOURS)
    table = np.array([COLOURS[n] for n in names], np.float32)  # (K, 3)
    chosen: list[str] = []
    for i, mask in enumerate(vis):
        under = bg[mask].mean(axis=0)  # (3,) background colour the instance sits on
        dist = np.sqrt(((table - under) ** 2).sum(1))  # (K,)
        ok = dist > 110
        # an instance must not share its colour with one it touches, or their edge vanishes
        grown = np.zeros_like(full[i])
        grown[1:] |= full[i][:-1]
        grown[:-1] |= full[i][1:]
        grown[:, 1:] |= full[i][:, :-1]
        grown[:, :-1] |= full[i][:, 1:]
        for j in range(i):
            if (grown & full[j]).any():
                ok[names.index(chosen[j])] = False
        if not ok.any():
            ok = dist >= np.sort(dist)[-3]  # fall back to the three most distant colours
        choices = np.flatnonzero(ok)
        chosen.append(names[int(choices[rng.integers(len(choices))])])
    return chosen


def render(spec: WorldSpec, split: str, index: int):
    """Render one image: (rgb (S, S, 3) uint8, [(category, colour, visible mask)], phrases).

    Deterministic in (spec.seed, split, index). Instances whose visible area falls
    below 35% of their in-frame area (or under 12 pixels) are removed before
    painting, so every painted shape is annotated and recognisable.
    """
    size = spec.size
    rng = np.random.default_rng([spec.seed, SPLITS.index(split), index])
    bg = _background(rng, size)
    pool = list(spec.seen) if split == "train" else [c.name for c in CATEGORIES]
    cats = _choose_categories(rng, pool)
    full = [_place(rng, c, size) for c in cats]
    # paint larger shapes first most of the time, so occlusion is partial, not total
    order = sorted(range(len(cats)), key=lambda i: -full[i].sum() + rng.normal(0, 800))
    cats, full = [cats[i] for i in order], [full[i] for i in order]
    while True:
        keep = [i for i, f in enumerate(full) if f.sum() >= 12]
        cats, full = [cats[i] for i in keep], [full[i] for i in keep]
        if not full:
            break
        vis = _visible(full)
        bad = [i for i in range(len(full)) if vis[i].sum() < max(12, 0.35 * full[i].sum())]
        if not bad:
            break
        drop = bad[0]  # drop one at a time: removing it may uncover the others
        cats, full = cats[:drop] + cats[drop + 1 :], full[:drop] + full[drop + 1 :]
    if not full:  # every shape was rejected (rare): the image is background only
        return np.clip(np.rint(bg), 0, 255).astype(np.uint8), [], []
    vis = _visible(full)
    colours = _pick_colours(rng, bg, vis, full)
    img = bg.copy()
    for mask, colour in zip(full, colours, strict=True):
        # a gentle shading ramp and grain so that objects are not flat stickers
        ys, xs = np.nonzero(mask)
        ang, amp = rng.uniform(0, 2 * np.pi), rng.uniform(0, 22)
        ramp = amp * ((np.cos(ang) * xs + np.sin(ang) * ys) / size - 0.5)  # (n,)
        paint = np.array(COLOURS[colour], np.float32) + ramp[:, None].astype(np.float32)
        paint += rng.standard_normal((len(ys), 3), dtype=np.float32) * 3  # (n, 3)
        img[ys, xs] = paint
    rgb = np.clip(np.rint(img), 0, 255).astype(np.uint8)  # (S, S, 3)
    views = _views(cats, colours, full, vis)
    phrases = describe(views, size, rng)
    return rgb, list(zip(cats, colours, vis, strict=True)), phrases


def _views(cats, colours, full, vis) -> list[InstanceView]:
    """Per-instance facts for the phrase grammar, measured on the rendered masks."""
    views = []
    for i, (cat, colour, m) in enumerate(zip(cats, colours, vis, strict=True)):
        ys, xs = np.nonzero(m)
        # j occludes i if j is drawn later and covers part of i's shape
        occluded_by = tuple(j for j in range(i + 1, len(full)) if (full[i] & full[j]).any())
        covers = tuple(j for j in range(i) if (full[i] & full[j]).any())
        views.append(
            InstanceView(
                cat, colour, float(xs.mean()), float(ys.mean()), float(m.sum()), occluded_by, covers
            )
        )
    return views


# ----------------------------------------------------------------------------- writing
def image_id_for(split: str, index: int) -> int:
    """The COCO / VG image id of the index-th image of a split."""
    return index + 1 + (VAL_ID_OFFSET if split == "val" else 0)


def _render_to_disk(job: tuple[WorldSpec, str, int, str]) -> tuple[dict, list[dict], list[dict]]:
    """Worker: render one image, write its PNG, return its json entries (no file writes else)."""
    from pycocotools import mask as mask_utils

    spec, split, index, out = job
    rgb, instances, phrases = render(spec, split, index)
    image_id = image_id_for(split, index)
    file_name = f"{image_id}.png"
    Image.fromarray(rgb).save(Path(out) / "images" / split / file_name, compress_level=6)
    image = {"id": image_id, "file_name": file_name, "height": spec.size, "width": spec.size}
    anns, regions = [], []
    cat_ids = {c.name: k + 1 for k, c in enumerate(CATEGORIES)}
    for k, ((cat, _colour, mask), phrase) in enumerate(zip(instances, phrases, strict=True)):
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
        ann_id = image_id * 100 + k
        anns.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": cat_ids[cat],
                "segmentation": {"size": [spec.size, spec.size], "counts": rle["counts"].decode()},
                "area": float(mask_utils.area(rle)),
                "bbox": [x, y, w, h],
                "iscrowd": 0,
            }
        )
        regions.append(
            {
                "region_id": ann_id,
                "image_id": image_id,
                "phrase": phrase,
                "x": int(x),
                "y": int(y),
                "width": int(w),
                "height": int(h),
            }
        )
    return image, anns, regions


def _dump(obj, path: Path) -> None:
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, separators=(",", ":"))
    os.replace(tmp, path)


def make_world(
    out: str | os.PathLike,
    spec: WorldSpec | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Render a world into `out` (see the module docstring for the layout); returns `out`.

    `workers` processes render images in parallel (default: all CPUs, at most 8);
    the files do not depend on it. The manifest is written last, so a directory
    without one is an unfinished world.
    """
    from tqdm import tqdm

    spec = spec or WorldSpec()
    out = claim(out, "world", "shapes world folder")  # never writes over a user's folder
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        manifest_path.unlink()  # an interrupted rewrite must not look finished
    workers = workers or min(os.cpu_count() or 1, 8)
    counts = {}
    for split in SPLITS:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        jobs = [(spec, split, i, str(out)) for i in range(spec.count(split))]
        bar = tqdm(total=len(jobs), desc=f"world {split}", unit="img", disable=not progress)
        results = []
        if workers > 1 and len(jobs) > 32:
            ctx = multiprocessing.get_context("spawn")  # fork is unsafe once torch is loaded
            with ctx.Pool(workers) as pool:
                for r in pool.imap(_render_to_disk, jobs, chunksize=16):
                    results.append(r)
                    bar.update()
        else:
            for job in jobs:
                results.append(_render_to_disk(job))
                bar.update()
        bar.close()
        counts[split] = _write_split(out, spec, split, results)
    manifest = {
        "format": "unicl-shapes-world",
        "format_version": FORMAT_VERSION,
        "seed": spec.seed,
        "size": spec.size,
        "images": {"train": spec.images, "val": spec.val_images},
        "categories": [
            {
                "id": k + 1,
                "name": c.name,
                "supercategory": c.supercategory,
                "synonyms": list(c.synonyms),
                "split": "unseen" if c.name in spec.unseen else "seen",
            }
            for k, c in enumerate(CATEGORIES)
        ],
        "seen": list(spec.seen),
        "unseen": [c.name for c in CATEGORIES if c.name in spec.unseen],
        "colours": list(COLOURS),
        "counts": counts,
    }
    with open(manifest_path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    return out


def _write_split(out: Path, spec: WorldSpec, split: str, results) -> dict:
    """Write one split's COCO and VG json files; return its counts for the manifest."""
    allowed = spec.seen if split == "train" else tuple(c.name for c in CATEGORIES)
    coco = {
        "info": {
            "description": f"unicl shapes world ({split})",
            "version": str(FORMAT_VERSION),
            "year": 2026,
            "contributor": "unicl make-world",
            "date_created": "",
        },
        "licenses": [],
        "images": [r[0] for r in results],
        "annotations": [a for r in results for a in r[1]],
        "categories": [
            {"id": k + 1, "name": c.name, "supercategory": c.supercategory}
            for k, c in enumerate(CATEGORIES)
            if c.name in allowed
        ],
    }
    vg = [{"id": r[0]["id"], "regions": r[2]} for r in results]
    _dump(coco, out / "annotations" / f"instances_{split}.json")
    _dump(vg, out / "annotations" / f"region_descriptions_{split}.json")
    per_category: dict[str, int] = {}
    id_to_name = {k + 1: c.name for k, c in enumerate(CATEGORIES)}
    for ann in coco["annotations"]:
        name = id_to_name[ann["category_id"]]
        per_category[name] = per_category.get(name, 0) + 1
    return {
        "images": len(coco["images"]),
        "instances": len(coco["annotations"]),
        "regions": sum(len(r[2]) for r in results),
        "instances_per_category": dict(sorted(per_category.items())),
    }


def read_manifest(root: str | os.PathLike) -> dict:
    """A world's manifest.json (FileNotFoundError / ValueError name the file)."""
    path = Path(root) / "manifest.json"
    manifest = read_json(path, "shapes world manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != "unicl-shapes-world":
        raise ValueError(f"{path} is not a unicl shapes world manifest (field 'format')")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {manifest.get('format_version')!r} is not the supported "
            f"{FORMAT_VERSION}; remake the world with `unicl make-world`"
        )
    return manifest
