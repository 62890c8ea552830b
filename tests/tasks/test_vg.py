"""Visual Genome reader on real-schema fixture files: category mapping, filters, bad input."""

import json
from pathlib import Path

import pytest

import unicl.tasks
from unicl.tasks.vg import PhraseMatcher, VisualGenomeRegions

FIXTURES = Path(unicl.tasks.__file__).parent / "fixtures" / "vg"
REGIONS = FIXTURES / "region_descriptions.json"
DIRS = [FIXTURES / "VG_100K", FIXTURES / "VG_100K_2"]
COCO_NAMES = ["person", "dog", "chair", "teddy bear"]


def _ids(reader):
    return {c: [r.region_id for r in v] for c, v in reader.pools.items()}


def test_phrase_mapping_and_filters():
    reader = VisualGenomeRegions(REGIONS, DIRS, COCO_NAMES, min_descriptions=0)
    # "man" -> person (synonym), "dogs" (plural), "teddy bear" wins over the later "chair";
    # "stuffed toy with a bow" names no category and "the sky" none either
    assert _ids(reader) == {
        "person": [1382],
        "dog": [1383, 1385],
        "chair": [4093],
        "teddy bear": [4091],
    }
    assert reader.unmapped == 2 and reader.skipped == 1  # the zero-width box
    rec = reader.pools["dog"][0]
    assert rec.phrase == "White dog lying down"  # whitespace normalised
    assert rec.box == (40.0, 20.0, 71.0, 51.0) and (rec.height, rec.width) == (60, 80)
    assert rec.image_path == DIRS[0] / "1.jpg" and rec.load_image().shape == (60, 80, 3)
    assert reader.pools["chair"][0].image_path == DIRS[1] / "2.jpg"
    # more than N descriptions: only "dog" has more than one
    assert VisualGenomeRegions(REGIONS, DIRS, COCO_NAMES, min_descriptions=1).categories == ["dog"]
    assert reader.counts["dog"] == 2


def test_objects_and_synsets_map_regions():
    reader = VisualGenomeRegions(
        REGIONS,
        DIRS,
        COCO_NAMES,
        0,
        objects_file=FIXTURES / "objects.json",
        image_data_file=FIXTURES / "image_data.json",
    )
    # the stuffed toy region overlaps an object whose synset is teddy.n.01
    assert _ids(reader)["teddy bear"] == [4091, 4092]
    assert reader.unmapped == 1


def test_matcher_prefers_longest_and_first():
    m = PhraseMatcher({"circle": (), "semicircle": ("half circle",), "star": ()})
    assert m.match("a half circle next to a circle") == "semicircle"
    assert m.match("two stars above a circle") == "star"
    assert m.match("Circles!") == "circle" and m.match("nothing here") is None


def test_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        VisualGenomeRegions(tmp_path / "missing.json", DIRS, COCO_NAMES)
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(ValueError, match="bad.json is not valid json"):
        VisualGenomeRegions(bad, DIRS, COCO_NAMES)
    data = json.loads(REGIONS.read_text())
    del data[1]["regions"][0]["phrase"]
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"\[1\] regions\[0\]: missing field 'phrase'"):
        VisualGenomeRegions(bad, DIRS, COCO_NAMES)
    with pytest.raises(FileNotFoundError, match="ids 2"):
        VisualGenomeRegions(REGIONS, DIRS[:1], COCO_NAMES)
    with pytest.raises(ValueError, match="categories"):
        VisualGenomeRegions(REGIONS, DIRS, [])
    with pytest.raises(ValueError, match="synonyms"):
        VisualGenomeRegions(REGIONS, DIRS, ["dog"], synonyms={"cat": ("kitty",)})
