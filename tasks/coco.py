"""MS-COCO instances reader: per-category pools of (image, category) segmentation records.

The paper's data (arXiv 2312.02520): the segmentation task draws its
demonstrations and queries from per-category pools of MS-COCO; a record is one
(image, category) whose mask merges every instance of that category in the
image. This reader builds those pools from an `instances_*.json` file (real COCO
2017 or the shapes world, which writes the same format). Masks stay as the raw
COCO segmentation objects in the records and are decoded by pycocotools only
when a task asks for them.

Every field a record needs is checked while reading (ids, image sizes, boxes,
polygon and RLE structure); an error names the file and the annotation or image
id. Size filters use COCO's area classes on the merged area of the record: small
(< 32^2 px), medium (< 96^2 px) and large; the paper keeps small objects.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

from unicl.tasks.records import (
    RecordPools,
    SegmentationRecord,
    check_segmentation,
    read_json,
    require,
    require_image_size,
    require_int,
    require_list,
    require_number,
)

AREA_CLASSES = {
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, float("inf")),
}


def area_class(area: float) -> str:
    """COCO's size class ("small", "medium" or "large") of an area in pixels."""
    for name, (lo, hi) in AREA_CLASSES.items():
        if lo <= area < hi:
            return name
    raise ValueError(f"area must be a non-negative number, got {area!r}")


def _check_bbox(bbox, where: str) -> None:
    """A COCO box is [x, y, width, height]: four finite numbers, width and height >= 0."""
    numbers = (
        isinstance(bbox, list)
        and len(bbox) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
    )
    if not numbers or not all(math.isfinite(v) for v in bbox):
        raise ValueError(
            f"{where}: bbox must be [x, y, width, height] (4 finite numbers), got {bbox!r}"
        )
    if bbox[2] < 0 or bbox[3] < 0:
        raise ValueError(
            f"{where}: bbox {bbox} has a negative width or height (COCO boxes are "
            "[x, y, width, height])"
        )


def _read_categories(data: dict, where: str) -> tuple[dict[str, int], dict[int, str]]:
    """(name -> category id, category id -> name) of the file's categories."""
    ids: dict[str, int] = {}
    names: dict[int, str] = {}
    for k, cat in enumerate(require_list(data, "categories", where)):
        at = f"{where} categories[{k}]"
        name, cid = str(require(cat, "name", at)), require_int(cat, "id", at)
        if cid in names or name in ids:
            raise ValueError(f"{at}: category {name!r} (id {cid}) appears twice")
        ids[name], names[cid] = cid, name
    return ids, names


def _read_images(data: dict, where: str) -> dict[int, tuple[str, int, int]]:
    """image id -> (file name, height, width) of the file's images."""
    images: dict[int, tuple[str, int, int]] = {}
    for k, img in enumerate(require_list(data, "images", where)):
        image_id = require_int(img, "id", f"{where} images[{k}]")
        at = f"{where}, image id {image_id} at images[{k}]"
        if image_id in images:
            raise ValueError(f"{at}: image id {image_id} appears twice")
        height, width = require_image_size(img, at)
        images[image_id] = (str(require(img, "file_name", at)), height, width)
    return images


def _group_instances(
    data: dict, where: str, images: dict, id_to_name: dict[int, str], include_crowd: bool
) -> dict[tuple[int, int], list[dict]]:
    """(image id, category id) -> its instance annotations, each checked (a group is a record)."""
    groups: dict[tuple[int, int], list[dict]] = {}
    for k, ann in enumerate(require_list(data, "annotations", where)):
        at = f"{where} annotations[{k}]"
        if isinstance(ann, dict) and "id" in ann:
            at = f"{where}, annotation id {ann['id']} at annotations[{k}]"
        image_id, cid = require_int(ann, "image_id", at), require_int(ann, "category_id", at)
        if ann.get("iscrowd", 0) and not include_crowd:
            continue
        if image_id not in images:
            raise ValueError(f"{at}: image_id {image_id} is not in the file's images")
        if cid not in id_to_name:
            raise ValueError(f"{at}: category_id {cid} is not in the file's categories")
        at = f"{at} (image_id {image_id})"
        _check_bbox(require(ann, "bbox", at), at)
        if "area" in ann:
            require_number(ann, "area", at)
        _, height, width = images[image_id]
        check_segmentation(require(ann, "segmentation", at), height, width, at)
        groups.setdefault((image_id, cid), []).append(ann)
    return groups


class CocoSegmentation(RecordPools):
    """Segmentation pools read from a COCO instances json.

    Args:
        ann_file: COCO `instances_*.json`.
        image_dir: directory holding the images named by `file_name`.
        categories: restrict to these category names (an unknown name is an error);
            default all categories of the file.
        sizes: keep records whose merged area falls in these COCO area classes.
        min_area: drop records whose merged area is below this many pixels.
        include_crowd: merge `iscrowd` regions into the masks too (COCO marks crowds
            of objects with one RLE; by default they are left out, as in COCO's own
            evaluation).
        check_images: fail at construction if an image a record needs is absent.

    Attributes:
        pools: category name -> records, ordered by image id.
        categories: names with a non-empty pool, in category-id order.
        category_ids: name -> COCO category id, for every category of the file.
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        categories: Iterable[str] | None = None,
        sizes: Iterable[str] = ("small", "medium", "large"),
        min_area: float = 0.0,
        include_crowd: bool = False,
        check_images: bool = True,
    ) -> None:
        self.ann_file, self.image_dir = Path(ann_file), Path(image_dir)
        sizes = tuple(sizes)
        bad = [s for s in sizes if s not in AREA_CLASSES]
        if bad:
            raise ValueError(f"sizes: unknown COCO area classes {bad}; valid: {list(AREA_CLASSES)}")
        data = read_json(self.ann_file, "COCO instances")
        where = str(self.ann_file)
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a json object with images/annotations/categories")
        self.category_ids, id_to_name = _read_categories(data, where)
        wanted = set(self.category_ids) if categories is None else set(categories)
        unknown = sorted(wanted - set(self.category_ids))
        if unknown:
            raise ValueError(
                f"categories: {unknown} are not categories of {where} "
                f"(it has {sorted(self.category_ids)})"
            )
        images = _read_images(data, where)
        groups = _group_instances(data, where, images, id_to_name, include_crowd)
        records = [
            self._record(image_id, id_to_name[cid], cid, images[image_id], anns)
            for (image_id, cid), anns in sorted(groups.items())
            if id_to_name[cid] in wanted
        ]
        kept = [r for r in records if r.area >= min_area and area_class(r.area) in sizes]
        self.pools = self._pools(kept, check_images)
        self.categories: list[str] = list(self.pools)

    @property
    def source(self) -> Path:
        return self.ann_file

    def _pools(
        self, records: list[SegmentationRecord], check_images: bool
    ) -> dict[str, list[SegmentationRecord]]:
        """category -> records (in category-id order); absent images are an error."""
        if check_images:
            missing = sorted({r.image_path for r in records if not r.image_path.is_file()})
            if missing:
                shown = ", ".join(str(p) for p in missing[:5])
                raise FileNotFoundError(
                    f"{len(missing)} images referenced by {self.ann_file} are absent from "
                    f"{self.image_dir}: {shown}"
                )
        pools: dict[str, list[SegmentationRecord]] = {}
        for record in records:
            pools.setdefault(record.category, []).append(record)
        return {name: pools[name] for name in sorted(pools, key=self.category_ids.__getitem__)}

    def _record(self, image_id, name, cid, image, anns) -> SegmentationRecord:
        file_name, height, width = image
        boxes = [a["bbox"] for a in anns]
        box = (
            float(min(b[0] for b in boxes)),
            float(min(b[1] for b in boxes)),
            float(max(b[0] + b[2] for b in boxes)),
            float(max(b[1] + b[3] for b in boxes)),
        )
        return SegmentationRecord(
            image_id=image_id,
            image_path=self.image_dir / file_name,
            category=name,
            category_id=cid,
            height=height,
            width=width,
            box=box,
            area=float(sum(float(a.get("area", 0.0)) for a in anns)),
            segmentations=tuple(a["segmentation"] for a in anns),
        )
