"""Bad dataset files are refused with errors that name the file and the record (table-driven).

Each case writes a tiny COCO or Visual Genome dataset under tmp_path, breaks one thing in it
(the json, a field of one record, an image file) and asserts the exception type and that the
message names the file and the annotation / image / region id. A 16-bit dataset image is read
with its values scaled, not clipped to white.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from unicl.tasks.coco import CocoSegmentation
from unicl.tasks.records import SegmentationRecord, load_rgb
from unicl.tasks.vg import VisualGenomeRegions

H, W = 16, 20


def _square_rle() -> dict:
    """A compressed RLE of a 4x4 square in an H x W image."""
    square = np.zeros((H, W), np.uint8, order="F")
    square[2:6, 3:7] = 1
    rle = mask_utils.encode(square)
    return {"size": [H, W], "counts": rle["counts"].decode()}


def _coco() -> dict:
    return {
        "images": [
            {"id": 1, "file_name": "1.png", "height": H, "width": W},
            {"id": 2, "file_name": "2.png", "height": H, "width": W},
        ],
        "categories": [{"id": 1, "name": "star"}, {"id": 2, "name": "circle"}],
        "annotations": [
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [2, 2, 6, 5], "area": 20.0,
             "iscrowd": 0, "segmentation": [[2, 2, 8, 2, 8, 7, 2, 7]]},
            {"id": 12, "image_id": 2, "category_id": 2, "bbox": [3, 2, 4, 4], "area": 16.0,
             "iscrowd": 0, "segmentation": _square_rle()},
        ],
    }  # fmt: skip


def _images(d: Path, names=("1.png", "2.png")) -> Path:
    d.mkdir(exist_ok=True)
    for k, name in enumerate(names):
        Image.fromarray(np.full((H, W, 3), 40 * k, np.uint8)).save(d / name)
    return d


def put(*path_and_value):
    """A mutation: set data[path...] = value."""
    *path, value = path_and_value

    def mutate(data):
        for key in path[:-1]:
            data = data[key]
        data[path[-1]] = value

    return mutate


def drop(*path):
    """A mutation: delete data[path...]."""

    def mutate(data):
        for key in path[:-1]:
            data = data[key]
        del data[path[-1]]

    return mutate


def unchanged(data) -> None:
    """No mutation: the file as written."""


def text(content: str | bytes):
    """A mutation: the file holds `content` instead of json."""
    return lambda data: content


def _write(path: Path, data, mutate) -> Path:
    replaced = mutate(data)
    if isinstance(replaced, bytes):
        path.write_bytes(replaced)
    else:
        path.write_text(replaced if isinstance(replaced, str) else json.dumps(data))
    return path


ANN = r"coco\.json, annotation id 11 at annotations\[0\] \(image_id 1\)"
SEG = ("annotations", 0, "segmentation")

# (id, mutation of the COCO json, exception, pattern the message must contain)
COCO = [
    ("not-json", text("{oops"), ValueError, r"COCO instances file .*coco\.json is not valid json"),
    ("not-utf8", text(b"\xff\xfe\x00{"), ValueError, r"coco\.json is not UTF-8 text"),
    ("top-level-list", text("[]"), ValueError, r"coco\.json: expected a json object"),
    ("no-annotations", drop("annotations"), ValueError,
     r"coco\.json: missing field 'annotations'"),
    ("annotations-not-a-list", put("annotations", {}), ValueError,
     r"coco\.json: 'annotations' must be a json list"),
    ("image-without-height", drop("images", 1, "height"), ValueError,
     r"coco\.json, image id 2 at images\[1\]: missing field 'height'"),
    ("image-height-string", put("images", 0, "height", "16"), ValueError,
     r"coco\.json, image id 1 at images\[0\]: field 'height' must be an integer"),
    ("image-zero-size", put("images", 0, "width", 0), ValueError,
     r"coco\.json, image id 1 at images\[0\]: image size 16x0 \(HxW\) is empty"),
    ("image-id-twice", put("images", 1, "id", 1), ValueError,
     r"coco\.json, image id 1 at images\[1\]: image id 1 appears twice"),
    ("image-id-fraction", put("images", 0, "id", 1.5), ValueError,
     r"coco\.json images\[0\]: field 'id' must be an integer, got 1\.5"),
    ("category-twice", put("categories", 1, "name", "star"), ValueError,
     r"coco\.json categories\[1\]: category 'star' \(id 2\) appears twice"),
    ("annotation-unknown-category", put("annotations", 0, "category_id", 9), ValueError,
     ANN.replace(r" \(image_id 1\)", "") + r": category_id 9 is not in the file's categories"),
    ("annotation-unknown-image", put("annotations", 0, "image_id", 77), ValueError,
     r"annotation id 11 at annotations\[0\]: image_id 77 is not in the file's images"),
    ("annotation-without-bbox", drop("annotations", 0, "bbox"), ValueError,
     ANN + r": missing field 'bbox'"),
    ("bbox-negative-width", put("annotations", 0, "bbox", [2, 2, -6, 5]), ValueError,
     ANN + r": bbox \[2, 2, -6, 5\] has a negative width or height"),
    ("bbox-negative-height", put("annotations", 0, "bbox", [2, 2, 6, -1]), ValueError,
     ANN + r": bbox .* has a negative width or height"),
    ("bbox-nan", put("annotations", 0, "bbox", [2, 2, math.nan, 5]), ValueError,
     ANN + r": bbox must be \[x, y, width, height\] \(4 finite numbers\)"),
    ("bbox-three-numbers", put("annotations", 0, "bbox", [2, 2, 6]), ValueError,
     ANN + r": bbox must be \[x, y, width, height\]"),
    ("area-string", put("annotations", 0, "area", "big"), ValueError,
     ANN + r": field 'area' must be a finite number"),
    ("polygon-four-numbers", put(*SEG, [[2, 2, 8, 2]]), ValueError,
     ANN + r": polygon 0 has 4 numbers; a polygon is an even count of at least 6"),
    ("polygon-odd-count", put(*SEG, [[2, 2, 8, 2, 8, 7, 2]]), ValueError,
     ANN + r": polygon 0 has 7 numbers"),
    ("polygon-words", put(*SEG, [[2, 2, "x", 2, 8, 7]]), ValueError,
     ANN + r": polygon 0 is not a flat list of x, y numbers"),
    ("polygon-nested", put(*SEG, [[[2, 2], [8, 2], [8, 7]]]), ValueError,
     ANN + r": polygon 0 is not a flat list"),
    ("polygon-nan", put(*SEG, [[2, 2, 8, 2, 8, math.nan]]), ValueError,
     ANN + r": polygon 0 has non-finite coordinates"),
    ("segmentation-string", put(*SEG, "star"), ValueError,
     ANN + r": a segmentation is a polygon list or an RLE dict"),
    ("rle-without-counts", put(*SEG, {"size": [H, W]}), ValueError,
     ANN + r": an RLE segmentation needs 'size' and 'counts', got keys \['size'\]"),
    ("rle-wrong-size", put(*SEG, {"size": [W, H], "counts": [H * W]}), ValueError,
     ANN + r": RLE size \[20, 16\] is not the image's \[height, width\] = \[16, 20\]"),
    ("rle-runs-too-short", put(*SEG, {"size": [H, W], "counts": [10, 5]}), ValueError,
     ANN + r": RLE run lengths sum to 15 .* the image has 16 \* 20 = 320 pixels"),
    ("rle-negative-run", put(*SEG, {"size": [H, W], "counts": [330, -10]}), ValueError,
     ANN + r": RLE run lengths sum to 320 \(min -10\)"),
    ("rle-garbage-string", put(*SEG, {"size": [H, W], "counts": "abc"}), ValueError,
     ANN + r": RLE counts 'abc' are not a compressed RLE"),
    ("rle-short-string", put(*SEG, {"size": [H, W], "counts": "0"}), ValueError,
     ANN + r": RLE run lengths sum to 0"),
]  # fmt: skip


def _params(table):
    return [pytest.param(*row[1:], id=row[0]) for row in table]


def test_the_unbroken_files_read(tmp_path):
    """The files every case breaks one thing of are valid as written."""
    images = _images(tmp_path / "images")
    coco = CocoSegmentation(_write(tmp_path / "coco.json", _coco(), unchanged), images)
    masks = [coco.pools[name][0].load_mask() for name in ("star", "circle")]
    assert [int(m.sum()) for m in masks] == [30, 16]
    vg = VisualGenomeRegions(
        _write(tmp_path / "regions.json", _vg(), unchanged),
        images,
        ["star", "circle"],
        min_descriptions=0,
        objects_file=_write(tmp_path / "objects.json", _vg_objects(), unchanged),
        image_data_file=_write(tmp_path / "image_data.json", _vg_sizes(), unchanged),
    )
    assert [r.region_id for p in vg.pools.values() for r in p] == [101, 102]


@pytest.mark.parametrize(("mutate", "error", "pattern"), _params(COCO))
def test_coco_reader_names_file_and_record(tmp_path, mutate, error, pattern):
    ann = _write(tmp_path / "coco.json", _coco(), mutate)
    with pytest.raises(error, match=pattern):
        CocoSegmentation(ann, _images(tmp_path / "images"))


def _broken(kind: str):
    """A mutation of image 1.png: truncated, text, another size, absent, transparent."""

    def mutate(path: Path) -> None:
        if kind == "truncated":  # noise does not compress: half the file cuts the pixel data
            noise = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
            Image.fromarray(noise).save(path)
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        elif kind == "text":
            path.write_text("not an image")
        elif kind == "size":
            Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(path)
        elif kind == "absent":
            path.unlink()
        elif kind == "transparent":
            Image.fromarray(np.zeros((H, W, 4), np.uint8)).save(path)

    return mutate


IMAGE = r"^image_id 1: .*1\.png"

# (id, mutation of image 1.png, exception, pattern): read when the record's image is loaded
IMAGE_FILES = [
    ("truncated", _broken("truncated"), ValueError, IMAGE + r" is not a readable image file"),
    ("not-an-image", _broken("text"), ValueError, IMAGE + r" is not a readable image file"),
    ("other-size", _broken("size"), ValueError,
     IMAGE + r" is 10x10 \(HxW\) but its annotations say 16x20"),
    ("absent", _broken("absent"), FileNotFoundError, r"^image_id 1: file not found: .*1\.png"),
    ("transparent", _broken("transparent"), ValueError,
     IMAGE + r" \(mode 'RGBA'\) has transparent pixels"),
]  # fmt: skip


@pytest.mark.parametrize(("mutate", "error", "pattern"), _params(IMAGE_FILES))
def test_dataset_images_name_file_and_record(tmp_path, mutate, error, pattern):
    images = _images(tmp_path / "images")
    reader = CocoSegmentation(_write(tmp_path / "coco.json", _coco(), unchanged), images)
    mutate(images / "1.png")
    with pytest.raises(error, match=pattern):
        reader.pools["star"][0].load_image()


def test_a_malformed_segmentation_names_its_record_when_decoded(tmp_path):
    record = SegmentationRecord(
        5, tmp_path / "5.png", "star", 1, H, W, (0.0, 0.0, 4.0, 4.0), 16.0, ([[0, 0, 4, 0]],)
    )
    with pytest.raises(ValueError, match=r"^image_id 5 \(.*5\.png\), star instance 0: polygon 0"):
        record.load_mask()


def test_16_bit_dataset_image_is_scaled(tmp_path):
    grey = np.linspace(0, 65535, H * W).round().astype(np.uint16).reshape(H, W)
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    rgb = load_rgb(tmp_path / "grey16.png", "image_id 1", size=(H, W))
    expected = np.round(grey / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(rgb, np.repeat(expected[:, :, None], 3, axis=2))
    assert rgb.min() == 0 and rgb.max() == 255 and len(np.unique(rgb)) > 200


# --------------------------------------------------------------------------- #
# Visual Genome
# --------------------------------------------------------------------------- #


def _vg() -> list:
    return [
        {"id": 1, "regions": [
            {"region_id": 101, "image_id": 1, "phrase": "a red star", "x": 2, "y": 3,
             "width": 6, "height": 5},
            {"region_id": 102, "image_id": 1, "phrase": "a blue circle", "x": 8, "y": 1,
             "width": 4, "height": 4},
        ]},
    ]  # fmt: skip


def _vg_sizes() -> list:
    return [{"image_id": 1, "height": H, "width": W}]


def _vg_objects() -> list:
    return [{"image_id": 1, "objects": [
        {"object_id": 7, "names": ["star"], "x": 2, "y": 3, "w": 6, "h": 5},
    ]}]  # fmt: skip


REGION = r"regions\.json \(image_id 1, region_id 101\) \[0\] regions\[0\]"
REG = (0, "regions", 0)

# (id, which file, its mutation, exception, pattern)
VG = [
    ("not-json", "regions", text("[{"), ValueError, r"regions\.json is not valid json"),
    ("top-level-object", "regions", text("{}"), ValueError, r"regions\.json: expected a json list"),
    ("regions-not-a-list", "regions", put(0, "regions", "x"), ValueError,
     r"regions\.json \[0\]: 'regions' must be a json list"),
    ("image-id-string", "regions", put(0, "id", "one"), ValueError,
     r"regions\.json \[0\]: field 'id' must be an integer"),
    ("region-without-phrase", "regions", drop(*REG, "phrase"), ValueError,
     REGION + r": missing field 'phrase'"),
    ("region-negative-width", "regions", put(*REG, "width", -6), ValueError,
     REGION + r": the region's width x height -6 x 5 is negative"),
    ("region-negative-height", "regions", put(*REG, "height", -1), ValueError,
     REGION + r": the region's width x height 6 x -1 is negative"),
    ("region-x-nan", "regions", put(*REG, "x", math.nan), ValueError,
     REGION + r": field 'x' must be a finite number"),
    ("region-y-string", "regions", put(*REG, "y", "3"), ValueError,
     REGION + r": field 'y' must be a finite number"),
    ("region-without-id", "regions", drop(*REG, "region_id"), ValueError,
     r"regions\.json \(image_id 1\) \[0\] regions\[0\]: missing field 'region_id'"),
    ("sizes-without-height", "image_data", drop(0, "height"), ValueError,
     r"image_data\.json \(image_id 1\) \[0\]: missing field 'height'"),
    ("sizes-zero", "image_data", put(0, "height", 0), ValueError,
     r"image_data\.json \(image_id 1\) \[0\]: image size 0x20 \(HxW\) is empty"),
    ("object-negative-size", "objects", put(0, "objects", 0, "w", -2), ValueError,
     r"objects\.json \(image_id 1, object_id 7\) \[0\] objects\[0\]: the object's w x h -2 x 5"),
    ("objects-without-image-id", "objects", drop(0, "image_id"), ValueError,
     r"objects\.json \[0\]: missing field 'image_id'"),
]  # fmt: skip


@pytest.mark.parametrize(("which", "mutate", "error", "pattern"), _params(VG))
def test_vg_reader_names_file_and_record(tmp_path, which, mutate, error, pattern):
    files = {"regions": _vg(), "image_data": _vg_sizes(), "objects": _vg_objects()}
    paths = {
        name: _write(tmp_path / f"{name}.json", data, mutate if name == which else unchanged)
        for name, data in files.items()
    }
    with pytest.raises(error, match=pattern):
        VisualGenomeRegions(
            paths["regions"],
            _images(tmp_path / "images", ("1.png",)),
            ["star", "circle"],
            min_descriptions=0,
            objects_file=paths["objects"],
            image_data_file=paths["image_data"],
        )


def test_vg_image_read_for_its_size_names_file_and_image(tmp_path):
    regions = _write(tmp_path / "regions.json", _vg(), unchanged)
    images = _images(tmp_path / "images", ("1.png",))
    (images / "1.png").write_text("not an image")
    with pytest.raises(ValueError, match=IMAGE + r" is not a readable image file"):
        VisualGenomeRegions(regions, images, ["star", "circle"], min_descriptions=0)


def test_vg_image_of_another_size_names_region(tmp_path):
    regions = _write(tmp_path / "regions.json", _vg(), unchanged)
    sizes = _write(tmp_path / "image_data.json", _vg_sizes(), put(0, "width", W + 4))
    images = _images(tmp_path / "images", ("1.png",))
    reader = VisualGenomeRegions(
        regions, images, ["star", "circle"], min_descriptions=0, image_data_file=sizes
    )
    with pytest.raises(ValueError, match=r"^image_id 1 \(region 101\): .*is 16x20 .* say 16x24"):
        reader.pools["star"][0].load_image()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("[]", "JSON object"),
        ('{"format": 1, "task": "segmentation", "records": {}, "max_shots": 1}', "'episodes'"),
        (
            '{"format": 1, "task": "s", "records": {}, "max_shots": 1, "episodes": [{}]}',
            "episode 0 must be an object",
        ),
        (
            '{"format": 1, "task": "s", "records": {"a": {}}, "max_shots": 2,'
            ' "episodes": [{"query": "a", "shots": {"1": []}}]}',
            "no 2-shot demonstrations",
        ),
        (
            '{"format": 1, "task": "s", "records": {}, "max_shots": "3", "episodes": []}',
            "max_shots",
        ),
    ],
    ids=["list", "no-episodes", "episode-not-object", "missing-shots", "max-shots-str"],
)
def test_malformed_episode_files_are_named(tmp_path, content, match):
    from unicl.tasks.episodes import read_episode_file

    path = tmp_path / "episodes.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as info:
        read_episode_file(path)
    assert str(path) in str(info.value)
