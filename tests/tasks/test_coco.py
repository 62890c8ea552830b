"""COCO instances reader on real-schema fixture files (polygons, RLE, crowds) and bad input."""

import json
from pathlib import Path

import numpy as np
import pytest

import unicl.tasks
from unicl.tasks.coco import CocoSegmentation, area_class

FIXTURES = Path(unicl.tasks.__file__).parent / "fixtures" / "coco"
ANN, IMAGES = FIXTURES / "instances_val2017.json", FIXTURES / "val2017"


def test_pools_merge_instances_of_a_category():
    reader = CocoSegmentation(ANN, IMAGES)
    assert reader.categories == ["person", "dog", "chair", "teddy bear"]  # category-id order
    person = reader.pools["person"]
    assert [r.image_id for r in person] == [139, 285]
    r139 = person[0]
    # two 15x15 squares (polygons) merged: the mask is their union, the box their union box
    assert r139.box == (4.0, 6.0, 45.0, 40.0)
    mask = r139.load_mask()
    assert mask.shape == (48, 64) and mask.dtype == bool
    assert mask.sum() == r139.area == 15 * 15 + 15 * 30
    assert mask[10, 10] and mask[20, 35] and not mask[30, 10]
    img = r139.load_image()
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8
    # a compressed-RLE instance decodes too (8x8 square)
    assert person[1].load_mask().sum() == 64 and person[1].load_mask()[30:38, 2:10].all()


def test_crowd_regions_are_left_out_unless_asked():
    plain = CocoSegmentation(ANN, IMAGES).pools["teddy bear"][0]
    crowd = CocoSegmentation(ANN, IMAGES, include_crowd=True).pools["teddy bear"][0]
    assert plain.load_mask().sum() == 400
    both = crowd.load_mask()
    assert both.sum() == 400 + 256 and both[40, 40] and not plain.load_mask()[40, 40]
    assert crowd.box == (10.0, 10.0, 50.0, 50.0)


def test_size_and_category_filters():
    assert (
        area_class(10) == "small" and area_class(1024) == "medium" and area_class(9216) == "large"
    )
    small = CocoSegmentation(ANN, IMAGES, sizes=["small"])
    assert all(area_class(r.area) == "small" for p in small.pools.values() for r in p)
    assert "person" not in CocoSegmentation(ANN, IMAGES, min_area=700).pools
    assert CocoSegmentation(ANN, IMAGES, sizes=["large"]).pools == {}
    dogs = CocoSegmentation(ANN, IMAGES, categories=["dog"])
    assert dogs.categories == ["dog"] and len(dogs) == 1
    with pytest.raises(ValueError, match="unicorn"):
        CocoSegmentation(ANN, IMAGES, categories=["dog", "unicorn"])
    with pytest.raises(ValueError, match="huge"):
        CocoSegmentation(ANN, IMAGES, sizes=["huge"])


def _write(tmp_path, data, name="bad.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_bad_input_names_file_record_and_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoSegmentation(tmp_path / "nope.json", IMAGES)
    with pytest.raises(ValueError, match=r"bad\.json is not valid json"):
        CocoSegmentation(_write(tmp_path, "{oops"), IMAGES)
    data = json.loads(ANN.read_text())
    broken = json.loads(json.dumps(data))
    del broken["annotations"][2]["category_id"]
    with pytest.raises(ValueError, match=r"annotations\[2\]: missing field 'category_id'"):
        CocoSegmentation(_write(tmp_path, broken), IMAGES)
    broken = json.loads(json.dumps(data))
    broken["annotations"][0]["image_id"] = 77
    with pytest.raises(ValueError, match="image_id 77"):
        CocoSegmentation(_write(tmp_path, broken), IMAGES)
    del data["images"][1]["file_name"]
    with pytest.raises(ValueError, match=r"images\[1\]: missing field 'file_name'"):
        CocoSegmentation(_write(tmp_path, data), IMAGES)
    with pytest.raises(FileNotFoundError, match="000000000139.jpg"):
        CocoSegmentation(ANN, tmp_path)


def test_missing_image_at_load_time(tmp_path):
    reader = CocoSegmentation(ANN, tmp_path, check_images=False)
    with pytest.raises(FileNotFoundError, match="000000000285.jpg"):
        reader.pools["dog"][0].load_image()
