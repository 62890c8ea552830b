"""The shapes world: layout, formats, determinism, pixel-consistent phrases, unseen split."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from unicl.tasks.metrics import described_colour
from unicl.tasks.records import decode_segmentation
from unicl.tasks.sources import DataConfig, ensure_world
from unicl.tasks.vg import VisualGenomeRegions
from unicl.tasks.world import SPLITS, WorldSpec, make_world, read_manifest, render
from unicl.tasks.world_phrases import position_phrase, size_word
from unicl.tasks.world_shapes import CATEGORIES, COLOURS, DEFAULT_UNSEEN, nearest_colour

SPEC = WorldSpec(seed=3, images=40, val_images=24, size=128)


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world") / "w", SPEC, workers=1, progress=False)


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_layout_and_manifest(world):
    for split in SPLITS:
        assert (world / "annotations" / f"instances_{split}.json").is_file()
        assert (world / "annotations" / f"region_descriptions_{split}.json").is_file()
    assert len(list((world / "images" / "train").glob("*.png"))) == 40
    assert len(list((world / "images" / "val").glob("*.png"))) == 24
    manifest = read_manifest(world)
    assert manifest["seed"] == 3 and manifest["size"] == 128
    assert len(manifest["categories"]) >= 16 and len(manifest["unseen"]) >= 4
    assert set(manifest["unseen"]) == set(DEFAULT_UNSEEN)
    assert set(manifest["seen"]) | set(manifest["unseen"]) == {c.name for c in CATEGORIES}
    assert len(manifest["colours"]) >= 8
    assert manifest["counts"]["train"]["images"] == 40


def test_pycocotools_loads_world(world):
    from pycocotools.coco import COCO

    coco = COCO(str(world / "annotations" / "instances_val.json"))
    anns = coco.loadAnns(coco.getAnnIds())
    assert anns and len(coco.getImgIds()) == 24
    for ann in anns[:20]:
        mask = coco.annToMask(ann)
        assert mask.shape == (128, 128) and mask.sum() == ann["area"]
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert {c["supercategory"] for c in coco.loadCats(coco.getCatIds())} >= {"round", "polygon"}


def test_unseen_categories_never_in_train_files(world):
    manifest = read_manifest(world)
    unseen_ids = {c["id"] for c in manifest["categories"] if c["split"] == "unseen"}
    coco = json.loads((world / "annotations" / "instances_train.json").read_text())
    assert not {a["category_id"] for a in coco["annotations"]} & unseen_ids
    assert not {c["id"] for c in coco["categories"]} & unseen_ids
    phrases = json.loads((world / "annotations" / "region_descriptions_train.json").read_text())
    text = " ".join(r["phrase"] for img in phrases for r in img["regions"])
    for cat in CATEGORIES:
        if cat.name in manifest["unseen"]:
            for noun in cat.nouns:
                assert not re.search(rf"\b{noun}s?\b", text), noun
    val = json.loads((world / "annotations" / "instances_val.json").read_text())
    assert {a["category_id"] for a in val["annotations"]} & unseen_ids


def test_same_arguments_same_bytes_across_worker_counts(world, tmp_path):
    other = make_world(tmp_path / "w2", SPEC, workers=2, progress=False)
    assert _files(world) == _files(other)
    for rel in _files(world):
        assert (world / rel).read_bytes() == (other / rel).read_bytes(), rel
    different = render(WorldSpec(seed=4, images=1, val_images=0), "train", 0)[0]
    assert not np.array_equal(different, np.asarray(Image.open(world / "images/train/1.png")))


def test_annotations_and_phrases_match_pixels(world):
    coco = json.loads((world / "annotations" / "instances_val.json").read_text())
    regions = json.loads((world / "annotations" / "region_descriptions_val.json").read_text())
    phrase_of = {r["region_id"]: r for img in regions for r in img["regions"]}
    names = {c["id"]: c["name"] for c in coco["categories"]}
    pixels = {}
    for ann in coco["annotations"]:
        if ann["image_id"] not in pixels:
            path = world / "images" / "val" / f"{ann['image_id']}.png"
            pixels[ann["image_id"]] = np.asarray(Image.open(path).convert("RGB"))
        mask = decode_segmentation(ann["segmentation"], 128, 128)
        assert mask.sum() == ann["area"] > 0
        region = phrase_of[ann["id"]]
        x, y, w, h = ann["bbox"]
        assert (region["x"], region["y"], region["width"], region["height"]) == (x, y, w, h)
        colour = nearest_colour(pixels[ann["image_id"]][mask].mean(axis=0))
        words = region["phrase"].split()
        named = [c for c in COLOURS if c in words]
        # the phrase names the paint the pixels show (a neighbour's colour may be named too)
        assert colour in named, (region["phrase"], colour, names[ann["category_id"]])
        if len(named) == 1:
            assert named == [colour]
        # the colour-word metric reads the described object's colour out of every phrase
        assert described_colour(region["phrase"], set(COLOURS)) == colour, region["phrase"]


def test_sizes_span_coco_area_classes(world):
    areas = []
    for split in SPLITS:
        coco = json.loads((world / "annotations" / f"instances_{split}.json").read_text())
        areas += [a["area"] for a in coco["annotations"]]
    areas = np.array(areas)
    assert (areas < 32**2).any() and ((areas >= 32**2) & (areas < 96**2)).any()
    assert (areas >= 96**2).any()
    per_image = {}
    for a in coco["annotations"]:
        per_image.setdefault(a["image_id"], set()).add(a["category_id"])
    assert max(len(v) for v in per_image.values()) >= 3


def test_every_region_maps_to_its_own_category(world):
    for split in SPLITS:
        reader = VisualGenomeRegions(
            world / "annotations" / f"region_descriptions_{split}.json",
            world / "images" / split,
            [c.name for c in CATEGORIES],
            min_descriptions=0,
        )
        coco = json.loads((world / "annotations" / f"instances_{split}.json").read_text())
        truth = {a["id"]: a["category_id"] for a in coco["annotations"]}
        ids = {c.name: k + 1 for k, c in enumerate(CATEGORIES)}
        assert reader.unmapped == 0 and len(reader) == len(truth)
        for category, records in reader.pools.items():
            assert all(truth[r.region_id] == ids[category] for r in records)


def test_phrases_vary(world):
    regions = json.loads((world / "annotations" / "region_descriptions_train.json").read_text())
    phrases = [r["phrase"] for img in regions for r in img["regions"]]
    assert len(set(phrases)) > 0.8 * len(phrases)
    text = " ".join(phrases)
    words = set(text.split())
    assert words & {"left", "right", "top", "bottom", "middle", "center"}  # positions
    assert words & {"tiny", "small", "little", "large", "big", "huge"}  # sizes
    assert words & {"disc", "dot", "hoop", "donut", "oval", "rhombus", "oblong", "moon"}  # synonyms
    assert any(w in text for w in ("above", "below", "behind", "covered", "in front of"))


def test_position_and_size_words():
    rng = np.random.default_rng(0)
    assert "left" in position_phrase(5, 64, 128, rng) and "top" in position_phrase(64, 5, 128, rng)
    corner = position_phrase(120, 120, 128, rng)
    assert "bottom" in corner and "right" in corner
    assert position_phrase(64, 64, 128, rng) in (
        "in the middle",
        "in the center",
        "near the center",
    )
    assert size_word(50, 128 * 128, rng) in ("tiny", "very small", "small")
    assert size_word(0.1 * 128 * 128, 128 * 128, rng) == ""
    assert size_word(0.5 * 128 * 128, 128 * 128, rng) in ("huge", "large", "big")


def test_every_category_renders():
    for cat in CATEGORIES:
        rng = np.random.default_rng(0)
        ops = cat.build(rng)
        assert ops and all(p.ndim == 2 and p.shape[1] == 2 for p, _ in ops), cat.name


def test_bad_specs_and_world_mismatch(world, tmp_path):
    with pytest.raises(ValueError, match="unseen"):
        WorldSpec(unseen=("circle", "dodecahedron"))
    with pytest.raises(ValueError, match="size"):
        WorldSpec(size=8)
    with pytest.raises(ValueError, match="images"):
        WorldSpec(images=-1)
    cfg = DataConfig(root=str(world), seed=3, images=40, val_images=24)
    assert ensure_world(cfg) == world
    with pytest.raises(ValueError, match="seed: world has 3, config asks 5"):
        ensure_world(DataConfig(root=str(world), seed=5, images=40, val_images=24))
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json"):
        read_manifest(tmp_path)


def test_make_world_command(tmp_path):
    from unicl.cli import main

    out = tmp_path / "cli"
    argv = ["make-world", str(out), "--seed", "1", "--images", "3", "--val-images", "2"]
    assert main(argv + ["--size", "64", "--unseen", "heart,ring,star,cross"]) == 0
    manifest = read_manifest(out)
    assert manifest["size"] == 64 and manifest["unseen"] == ["star", "ring", "cross", "heart"]
    assert Image.open(out / "images" / "val" / "1000001.png").size == (64, 64)


def test_data_pools_from_the_world(world):
    from unicl.tasks.sources import caption_pools, category_split, segmentation_pools

    cfg = DataConfig(root=str(world), seed=3, images=40, val_images=24, min_descriptions=2)
    split = category_split(cfg)
    assert set(split["unseen"]) == set(DEFAULT_UNSEEN)
    train, val = segmentation_pools(cfg, "train"), segmentation_pools(cfg, "val")
    assert set(train) <= set(split["seen"]) and set(val) & set(split["unseen"])
    record = train[next(iter(train))][0]
    assert record.load_mask().sum() == record.area
    captions = caption_pools(cfg, "train")
    assert set(captions) <= set(split["seen"])
    assert all(len(v) > 2 for v in captions.values())
    # val keeps the unseen categories although they have no train descriptions
    assert set(caption_pools(cfg, "val")) & set(split["unseen"])
    with pytest.raises(ValueError, match="split"):
        segmentation_pools(cfg, "test")
    with pytest.raises(ValueError, match="no caption records"):
        caption_pools(DataConfig(root=str(world), seed=3, images=40, val_images=24), "train")


def test_data_pools_from_real_files():
    from pathlib import Path

    import unicl.tasks
    from unicl.tasks.sources import caption_pools, category_split, segmentation_pools

    fx = Path(unicl.tasks.__file__).parent / "fixtures"
    cfg = DataConfig(
        coco_val_ann=str(fx / "coco/instances_val2017.json"),
        coco_val_images=str(fx / "coco/val2017"),
        vg_train_regions=str(fx / "vg/region_descriptions.json"),
        vg_val_regions=str(fx / "vg/region_descriptions.json"),
        vg_images=f"{fx / 'vg/VG_100K'},{fx / 'vg/VG_100K_2'}",
        min_descriptions=1,
        unseen=["chair"],
    )
    assert set(segmentation_pools(cfg, "val")) == {"person", "dog", "chair", "teddy bear"}
    assert category_split(cfg)["unseen"] == ["chair"]
    assert set(caption_pools(cfg, "train")) == {"dog"}
    assert set(caption_pools(cfg, "val")) == {"dog", "chair"}
    with pytest.raises(ValueError, match="coco_train_ann"):
        segmentation_pools(cfg, "train")
    cfg.unseen = ["unicorn"]
    with pytest.raises(ValueError, match="unicorn"):
        category_split(cfg)
