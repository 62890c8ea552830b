"""Visual Genome region-description reader: per-category caption pools.

The paper's data (arXiv 2312.02520): the captioning task uses Visual Genome
region descriptions whose category matches a COCO class with more than 100
descriptions. This reader maps each region of a `region_descriptions.json` (real
VG or the shapes world, which writes the same format) to one of the given
categories and keeps categories with more than `min_descriptions` regions.

Mapping a region to a category:
1. with VG's `objects.json` given: the object with the highest box IoU (>= 0.5)
   with the region whose name or synset lemma names a category;
2. otherwise (or when no object matches): the first category noun in the phrase,
   matching the longest name or synonym ("half circle" before "circle") and plural
   forms. VG phrases name their subject first ("man riding a horse").

Regions whose box is empty (zero width or height, or outside the image) or whose
phrase is empty are skipped and counted; a malformed one (a missing field, a
non-finite number, a negative width or height) is an error naming the file, the
image id and the region id.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from unicl.tasks.records import (
    CaptionRecord,
    RecordPools,
    image_size,
    read_json,
    require,
    require_image_size,
    require_int,
    require_list,
    require_number,
)
from unicl.tasks.world_shapes import CATEGORY_BY_NAME

#: A few common words for COCO classes (real VG phrases rarely use COCO's exact names).
COCO_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": (
        "man",
        "woman",
        "people",
        "boy",
        "girl",
        "child",
        "kid",
        "guy",
        "lady",
        "player",
        "skier",
        "surfer",
        "skateboarder",
    ),
    "bicycle": ("bike",),
    "car": ("sedan", "taxi"),
    "motorcycle": ("motorbike",),
    "airplane": ("plane", "jet", "aircraft"),
    "bus": ("buses",),
    "boat": ("ship",),
    "couch": ("sofa",),
    "tv": ("television", "tv screen"),
    "laptop": ("notebook computer",),
    "cell phone": ("phone", "cellphone", "mobile phone"),
    "dining table": ("table",),
    "potted plant": ("plant", "houseplant"),
    "hot dog": ("hotdog",),
    "donut": ("doughnut",),
    "mouse": ("computer mouse",),
    "sports ball": ("ball", "soccer ball", "tennis ball"),
    "wine glass": ("glass",),
    "teddy bear": ("teddy",),
}

_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")


def _plurals(word: str) -> set[str]:
    out = {word, word + "s"}
    if word.endswith(("s", "x", "ch", "sh")):
        out.add(word + "es")
    if word.endswith("y") and len(word) > 2 and word[-2] not in "aeiou":
        out.add(word[:-1] + "ies")
    if word.endswith("f"):
        out.add(word[:-1] + "ves")
    return out


def builtin_synonyms(categories: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Synonyms known to unicl (shapes world nouns and COCO_SYNONYMS) for these names."""
    out = {}
    for name in categories:
        extra = CATEGORY_BY_NAME[name].synonyms if name in CATEGORY_BY_NAME else ()
        out[name] = tuple(extra) + COCO_SYNONYMS.get(name, ())
    return out


class PhraseMatcher:
    """Finds the first category named in a phrase (longest name/synonym wins at a position)."""

    def __init__(self, synonyms: dict[str, Sequence[str]]) -> None:
        self.table: dict[tuple[str, ...], str] = {}
        for category, words in synonyms.items():
            for noun in (category, *words):
                tokens = tuple(_WORD.findall(noun.lower()))
                if not tokens:
                    continue
                for last in _plurals(tokens[-1]):
                    self.table.setdefault((*tokens[:-1], last), category)
        self.longest = max((len(k) for k in self.table), default=0)

    def match(self, phrase: str) -> str | None:
        tokens = _WORD.findall(phrase.lower())
        for i in range(len(tokens)):
            for n in range(min(self.longest, len(tokens) - i), 0, -1):
                hit = self.table.get(tuple(tokens[i : i + n]))
                if hit is not None:
                    return hit
        return None


def _image_id(entry: dict, keys: tuple[str, str], where: str, first: dict | None = None) -> int:
    """The image id of a VG entry: the first of `keys` it has, else its `first` item's."""
    for key in keys:
        if isinstance(entry, dict) and key in entry:
            return require_int(entry, key, where)
    if first is None:
        return require_int(entry, keys[0], where)
    return require_int(first, "image_id", f"{where} regions[0]")


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _item_where(
    where: str, k: int, image_id: int, field: str, index: int, item, id_key: str
) -> str:
    """How errors name a region or an object: file, image id, its own id (if any), position."""
    item_id = item.get(id_key) if isinstance(item, dict) else None
    ids = f"image_id {image_id}" + ("" if item_id is None else f", {id_key} {item_id}")
    return f"{where} ({ids}) [{k}] {field}[{index}]"


class VisualGenomeRegions(RecordPools):
    """Caption pools read from a Visual Genome region_descriptions json.

    Args:
        regions_file: `region_descriptions.json` (a list of {"id", "regions": [...]}).
        image_dir: directory (or several) holding `<image_id>.jpg` / `.png`.
        categories: category names regions are mapped to (e.g. COCO's classes).
        min_descriptions: keep categories with MORE than this many regions (100 in the
            paper); 0 keeps every category with at least one.
        objects_file: optional VG `objects.json` used to map regions through objects.
        image_data_file: optional VG `image_data.json` giving image sizes (else each
            image's header is read).
        synonyms: category -> extra nouns; default `builtin_synonyms(categories)`.
        check_images: fail at construction if an image a record needs is absent.

    Attributes:
        pools: category -> records (file order); categories: kept names (given order);
        counts: category -> number of mapped regions before the filter;
        unmapped: number of regions that named no category; skipped: empty phrases or boxes.
    """

    def __init__(
        self,
        regions_file: str | os.PathLike,
        image_dir: str | os.PathLike | Sequence[str | os.PathLike],
        categories: Iterable[str],
        min_descriptions: int = 100,
        objects_file: str | os.PathLike | None = None,
        image_data_file: str | os.PathLike | None = None,
        synonyms: dict[str, Sequence[str]] | None = None,
        check_images: bool = True,
    ) -> None:
        self.regions_file = Path(regions_file)
        dirs = [image_dir] if isinstance(image_dir, (str, os.PathLike)) else list(image_dir)
        self.image_dirs = [Path(d) for d in dirs]
        if not self.image_dirs:
            raise ValueError("image_dir: give at least one image directory")
        categories = list(categories)
        if not categories:
            raise ValueError("categories: give at least one category name")
        synonyms = builtin_synonyms(categories) if synonyms is None else synonyms
        unknown = sorted(set(synonyms) - set(categories))
        if unknown:
            raise ValueError(f"synonyms: {unknown} are not among the given categories")
        self.matcher = PhraseMatcher({c: tuple(synonyms.get(c, ())) for c in categories})
        data = read_json(self.regions_file, "Visual Genome region descriptions")
        if not isinstance(data, list):
            raise ValueError(f"{self.regions_file}: expected a json list of images with 'regions'")
        sizes = self._read_sizes(image_data_file) if image_data_file else {}
        objects = self._read_objects(objects_file) if objects_file else {}
        self.unmapped = self.skipped = 0
        mapped: dict[str, list[CaptionRecord]] = {c: [] for c in categories}
        for record in self._records(data, sizes, objects, check_images):
            mapped[record.category].append(record)
        self.counts = {c: len(v) for c, v in mapped.items()}
        self.pools = {c: v for c, v in mapped.items() if len(v) > min_descriptions and v}
        self.categories: list[str] = list(self.pools)

    @property
    def source(self) -> Path:
        return self.regions_file

    def _records(self, data: list, sizes: dict, objects: dict, check: bool) -> list[CaptionRecord]:
        """The records of every region that maps to a category, in file order."""
        where = str(self.regions_file)
        records: list[CaptionRecord] = []
        missing: list[str] = []
        for k, entry in enumerate(data):
            at = f"{where} [{k}]"
            regions = require_list(entry, "regions", at)
            if not regions:
                continue
            image_id = _image_id(entry, ("id", "image_id"), at, regions[0])
            path = self._image_path(image_id, check)
            if path is None:
                missing.append(str(image_id))
                continue
            if image_id not in sizes:
                sizes[image_id] = image_size(path, f"image_id {image_id}")
            for r, region in enumerate(regions):
                rat = _item_where(where, k, image_id, "regions", r, region, "region_id")
                record = self._region(region, rat, image_id, path, sizes[image_id], objects)
                if record is not None:
                    records.append(record)
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} images referenced by {where} are absent from "
                f"{[str(d) for d in self.image_dirs]} (as <id>.jpg or <id>.png): "
                f"ids {', '.join(missing[:5])}"
            )
        return records

    def _region(self, region, at: str, image_id: int, path: Path, size, objects: dict):
        """The CaptionRecord of one region, or None (counted) when it is empty or unmapped."""
        height, width = size
        phrase = " ".join(str(require(region, "phrase", at)).split())
        x, y = require_number(region, "x", at), require_number(region, "y", at)
        w, h = require_number(region, "width", at), require_number(region, "height", at)
        if w < 0 or h < 0:
            raise ValueError(f"{at}: the region's width x height {w:g} x {h:g} is negative")
        box = (max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h))
        if not phrase or box[2] <= box[0] or box[3] <= box[1]:
            self.skipped += 1
            return None
        category = self._category(phrase, box, objects.get(image_id, ()))
        if category is None:
            self.unmapped += 1
            return None
        region_id = require_int(region, "region_id", at)
        return CaptionRecord(region_id, image_id, path, category, phrase, box, height, width)

    def _image_path(self, image_id: int, check: bool) -> Path | None:
        for d in self.image_dirs:
            for ext in (".jpg", ".png"):
                p = d / f"{image_id}{ext}"
                if p.is_file():
                    return p
        return None if check else self.image_dirs[0] / f"{image_id}.jpg"

    @staticmethod
    def _read_sizes(image_data_file) -> dict[int, tuple[int, int]]:
        where = str(image_data_file)
        data = read_json(Path(image_data_file), "Visual Genome image_data")
        if not isinstance(data, list):
            raise ValueError(f"{where}: expected a json list of images")
        sizes = {}
        for k, img in enumerate(data):
            image_id = _image_id(img, ("image_id", "id"), f"{where} [{k}]")
            sizes[image_id] = require_image_size(img, f"{where} (image_id {image_id}) [{k}]")
        return sizes

    def _read_objects(self, objects_file) -> dict[int, list[tuple[tuple, str]]]:
        """image id -> [(box, category)] for VG objects whose names/synsets name a category."""
        where = str(objects_file)
        data = read_json(Path(objects_file), "Visual Genome objects")
        if not isinstance(data, list):
            raise ValueError(f"{where}: expected a json list of images with 'objects'")
        out: dict[int, list[tuple[tuple, str]]] = {}
        for k, entry in enumerate(data):
            at = f"{where} [{k}]"
            objs = require_list(entry, "objects", at)
            image_id = _image_id(entry, ("image_id", "id"), at)
            for o, obj in enumerate(objs):
                oat = _item_where(where, k, image_id, "objects", o, obj, "object_id")
                x, y = require_number(obj, "x", oat), require_number(obj, "y", oat)
                words = list(obj.get("names", [])) + ([obj["name"]] if "name" in obj else [])
                words += [s.split(".")[0].replace("_", " ") for s in obj.get("synsets", [])]
                category = next((c for c in map(self.matcher.match, words) if c), None)
                if category is None:
                    continue
                w, h = require_number(obj, "w", oat), require_number(obj, "h", oat)
                if w < 0 or h < 0:
                    raise ValueError(f"{oat}: the object's w x h {w:g} x {h:g} is negative")
                out.setdefault(image_id, []).append(((x, y, x + w, y + h), category))
        return out

    def _category(self, phrase: str, box, objects) -> str | None:
        best, best_iou = None, 0.5
        for obox, category in objects:
            iou = _iou(box, obox)
            if iou >= best_iou:
                best, best_iou = category, iou
        return best or self.matcher.match(phrase)
