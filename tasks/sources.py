"""Where a run's data lives: the shapes world or COCO / Visual Genome files.

`DataConfig` is the `data:` section of a unicl config. By default everything
comes from a shapes world under `root` (made on first use, docs/data.md "The
shapes world"); setting the `coco_*` / `vg_*` paths switches a task to the real
datasets of the paper (arXiv 2312.02520) through the same readers. The functions
below are what tasks call: category pools per split and the seen/unseen split.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from unicl.tasks.coco import CocoSegmentation
from unicl.tasks.records import read_json, require
from unicl.tasks.vg import VisualGenomeRegions
from unicl.tasks.world import WorldSpec, make_world, read_manifest
from unicl.tasks.world_shapes import DEFAULT_UNSEEN, category_names

SPLITS = ("train", "val")


@dataclasses.dataclass
class DataConfig:
    """Dataset locations and the shapes world's generation options.

    Empty path strings mean "use the shapes world under `root`".
    """

    root: str = "worlds/shapes"  # where the shapes world is (or will be made)
    seed: int = 0  # world seed
    images: int = 4000  # world train images
    val_images: int = 500  # world val images
    size: int = 128  # world image side (pixels)
    workers: int = 0  # processes making the world and the token cache (0: all CPUs, at most 8)
    # categories held out of training: world default when empty; for real COCO, names of its classes
    unseen: list[str] = dataclasses.field(default_factory=list)

    coco_train_ann: str = ""  # e.g. annotations/instances_train2017.json
    coco_val_ann: str = ""
    coco_train_images: str = ""  # e.g. train2017/
    coco_val_images: str = ""
    sizes: list[str] = dataclasses.field(default_factory=lambda: ["small", "medium", "large"])
    min_area: float = 0.0  # drop segmentation records whose merged area is below this (pixels)

    vg_train_regions: str = ""  # region_descriptions.json of the training images
    vg_val_regions: str = ""
    vg_images: str = ""  # image directory; several separated by commas (VG_100K,VG_100K_2)
    vg_objects: str = ""  # optional objects.json (maps regions through objects)
    vg_image_data: str = ""  # optional image_data.json (image sizes without opening images)
    vg_categories: list[str] = dataclasses.field(default_factory=list)  # default: COCO's classes
    min_descriptions: int = 100  # keep categories with MORE descriptions in train (paper: 100)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def uses_world_for_segmentation(cfg: DataConfig) -> bool:
    """Do segmentation records come from the shapes world (no COCO file configured)?"""
    return not (cfg.coco_train_ann or cfg.coco_val_ann)


def uses_world_for_captions(cfg: DataConfig) -> bool:
    """Do caption records come from the shapes world (no Visual Genome file configured)?"""
    return not (cfg.vg_train_regions or cfg.vg_val_regions)


def uses_shapes_world(cfg: DataConfig) -> bool:
    """Does either dataset come from the shapes world (so that it must exist first)?"""
    return uses_world_for_segmentation(cfg) or uses_world_for_captions(cfg)


def _need(cfg: DataConfig, field: str) -> str:
    value = getattr(cfg, field)
    if not value:
        raise ValueError(f"data.{field} must be set when real COCO / Visual Genome data is used")
    return value


def world_spec(cfg: DataConfig):
    """The `WorldSpec` the config asks for."""
    unseen = tuple(cfg.unseen) if cfg.unseen else DEFAULT_UNSEEN
    return WorldSpec(cfg.seed, cfg.images, cfg.val_images, cfg.size, unseen)


def ensure_world(cfg: DataConfig, progress: bool = True) -> Path:
    """Make the shapes world under `cfg.root` if it is missing, else reuse it; returns the root.

    An existing world made with other options is an error (never silently used).
    """
    root, spec = Path(cfg.root), world_spec(cfg)
    if not (root / "manifest.json").is_file():
        make_world(root, spec, workers=cfg.workers or None, progress=progress)
        return root
    manifest = read_manifest(root)
    found = {
        "seed": manifest.get("seed"),
        "size": manifest.get("size"),
        "images": manifest.get("images", {}).get("train"),
        "val_images": manifest.get("images", {}).get("val"),
        "unseen": sorted(manifest.get("unseen", [])),
    }
    wanted = {
        "seed": spec.seed,
        "size": spec.size,
        "images": spec.images,
        "val_images": spec.val_images,
        "unseen": sorted(spec.unseen),
    }
    diff = {k: (found[k], wanted[k]) for k in wanted if found[k] != wanted[k]}
    if diff:
        detail = ", ".join(f"{k}: world has {a!r}, config asks {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"the shapes world at {root} was made with other options ({detail}); "
            "point data.root elsewhere or delete that directory"
        )
    return root


def segmentation_pools(cfg: DataConfig, split: str):
    """category -> SegmentationRecords of a split (COCO if configured, else the world)."""
    _check_split(split)
    if uses_world_for_segmentation(cfg):
        root = ensure_world(cfg)
        ann, images = root / "annotations" / f"instances_{split}.json", root / "images" / split
    else:
        ann, images = _need(cfg, f"coco_{split}_ann"), _need(cfg, f"coco_{split}_images")
    reader = CocoSegmentation(ann, images, sizes=cfg.sizes, min_area=cfg.min_area)
    if not reader.pools:
        raise ValueError(f"no segmentation records in {ann} after the size filters")
    return reader.pools


def _caption_categories(cfg: DataConfig) -> list[str]:
    """Names regions are mapped to: configured, else COCO's classes, else the world's."""
    if cfg.vg_categories:
        return list(cfg.vg_categories)
    ann = cfg.coco_val_ann or cfg.coco_train_ann
    if ann:
        cats = require(read_json(Path(ann), "COCO instances"), "categories", str(ann))
        return [str(require(c, "name", f"{ann} categories[{k}]")) for k, c in enumerate(cats)]
    return category_names()


def caption_pools(cfg: DataConfig, split: str):
    """category -> CaptionRecords of a split (Visual Genome if configured, else the world).

    Categories are those with more than `min_descriptions` regions in the TRAIN
    file (the paper, arXiv 2312.02520, keeps classes with more than 100
    descriptions), plus the unseen categories, which have none there by
    construction; val pools use that list.
    """
    _check_split(split)
    categories = _caption_categories(cfg)
    if uses_world_for_captions(cfg):
        root = ensure_world(cfg)
        files = {s: root / "annotations" / f"region_descriptions_{s}.json" for s in SPLITS}
        dirs = {s: [root / "images" / s] for s in SPLITS}
        objects = image_data = None
    else:
        files = {s: getattr(cfg, f"vg_{s}_regions") for s in SPLITS}
        shared = [d.strip() for d in _need(cfg, "vg_images").split(",") if d.strip()]
        dirs = {s: shared for s in SPLITS}
        objects, image_data = cfg.vg_objects or None, cfg.vg_image_data or None
    if not files[split]:
        raise ValueError(f"data.vg_{split}_regions must be set when Visual Genome data is used")

    def read(s: str, min_descriptions: int):
        return VisualGenomeRegions(
            files[s], dirs[s], categories, min_descriptions, objects, image_data
        )

    train = read("train", cfg.min_descriptions) if files["train"] else None
    unseen = set(category_split(cfg)["unseen"])
    if split == "train":
        pools = train.pools
    else:
        keep = (set(train.categories) if train else set(categories)) | unseen
        pools = {c: v for c, v in read("val", 0).pools.items() if c in keep}
    if not pools:
        raise ValueError(
            f"no caption records in {files[split]} map to a category with more than "
            f"{cfg.min_descriptions} descriptions (data.min_descriptions)"
        )
    return pools


def category_split(cfg: DataConfig) -> dict[str, list[str]]:
    """{"seen": [...], "unseen": [...]}: the world's manifest, or COCO classes minus `unseen`."""
    if uses_world_for_segmentation(cfg) and uses_world_for_captions(cfg):
        from unicl.tasks.world import read_manifest

        manifest = read_manifest(ensure_world(cfg))
        return {"seen": list(manifest["seen"]), "unseen": list(manifest["unseen"])}
    names = _caption_categories(cfg)
    unknown = sorted(set(cfg.unseen) - set(names))
    if unknown:
        raise ValueError(f"data.unseen: {unknown} are not dataset categories ({names})")
    return {
        "seen": [n for n in names if n not in cfg.unseen],
        "unseen": [n for n in names if n in cfg.unseen],
    }
