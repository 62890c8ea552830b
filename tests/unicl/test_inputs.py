"""Input coercion and the clear errors of unicl/inputs.py on bad input."""

import numpy as np
import pytest
from PIL import Image

from unicl import inputs


def _rgb(h=12, w=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_image_forms_agree(tmp_path):
    array = _rgb()
    path = tmp_path / "img.png"
    Image.fromarray(array).save(path)
    for value in (array, Image.fromarray(array), path, str(path)):
        out = inputs.to_image(value, "query")
        assert out.dtype == np.uint8 and out.shape == (12, 16, 3)
        np.testing.assert_array_equal(out, array)
    grey = inputs.to_image(array[:, :, 0], "query")
    assert grey.shape == (12, 16, 3)
    rgba = inputs.to_image(Image.fromarray(array).convert("RGBA"), "query")
    np.testing.assert_array_equal(rgba, array)


def test_mask_forms_agree(tmp_path):
    mask = np.zeros((12, 16), bool)
    mask[3:8, 2:9] = True
    path = tmp_path / "mask.png"
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    forms = [
        mask,
        mask.astype(np.uint8),
        mask.astype(np.uint8) * 255,
        np.repeat(mask[:, :, None].astype(np.uint8) * 255, 3, axis=2),
        Image.fromarray(mask.astype(np.uint8) * 255),
        path,
    ]
    for value in forms:
        out = inputs.to_mask(value, "mask", size=(12, 16))
        assert out.dtype == np.bool_
        np.testing.assert_array_equal(out, mask)


def test_missing_path_names_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"query: file not found"):
        inputs.to_image(tmp_path / "nope.png", "query")


def test_non_image_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an image")
    with pytest.raises(ValueError, match=r"demos\[0\]\[0\]: .*not a readable image"):
        inputs.to_image(path, "demos[0][0]")
    with pytest.raises(ValueError, match="is not a file"):
        inputs.to_image(tmp_path, "query")


def test_bad_image_arrays():
    # floats in [0, 1] are images; other dtypes of unknown range are refused
    np.testing.assert_array_equal(inputs.to_image(np.ones((4, 4, 3), np.float32), "query"), 255)
    with pytest.raises(ValueError, match="query: .*int64 pixels, whose range is unknown"):
        inputs.to_image(np.zeros((4, 4, 3), np.int64), "query")
    with pytest.raises(ValueError, match=r"query: .*\(H, W, C\) with C in 1-4"):
        inputs.to_image(np.zeros((4, 4, 5), np.uint8), "query")
    with pytest.raises(TypeError, match="query: expected a PIL image"):
        inputs.to_image(42, "query")


def test_mask_size_mismatch():
    with pytest.raises(ValueError, match=r"demos\[0\]\[1\]: mask is 5x5 .* image is 12x16"):
        inputs.segmentation_demos([(_rgb(), np.zeros((5, 5), bool))])


def test_mask_bad_dtype_and_range():
    # float masks in [0, 1] are thresholded at 0.5; values outside are refused
    assert not inputs.to_mask(np.full((4, 4), 0.4, np.float32), "mask").any()
    with pytest.raises(
        ValueError, match=r"mask: the float mask has values in 2..2, not in \[0, 1\]"
    ):
        inputs.to_mask(np.full((4, 4), 2.0, np.float32), "mask")
    with pytest.raises(ValueError, match=r"mask: mask values \{300\} are not a binary mask"):
        inputs.to_mask(np.full((4, 4), 300, np.int32), "mask")


def test_demo_tuple_wrong_shape():
    with pytest.raises(
        ValueError, match=r"demos\[1\]: expected a \(image, mask\) tuple of 2 items, got 3"
    ):
        inputs.segmentation_demos([(_rgb(), np.zeros((12, 16), bool)), (_rgb(), _rgb(), _rgb())])
    with pytest.raises(ValueError, match=r"demos\[0\]: .*3 items, got 2"):
        inputs.caption_demos([(_rgb(), (0, 0, 4, 4))])
    with pytest.raises(TypeError, match=r"demos\[0\]: expected"):
        inputs.segmentation_demos([_rgb()])
    with pytest.raises(TypeError, match="demos: expected a list"):
        inputs.segmentation_demos(_rgb())


def test_box_checks():
    assert inputs.to_box((1, 2, 10, 12), "box", 12, 16) == (1.0, 2.0, 10.0, 12.0)
    with pytest.raises(ValueError, match="box .* outside the image"):
        inputs.to_box((1, 2, 17, 5), "box", 12, 16)
    with pytest.raises(ValueError, match="box .* outside the image"):
        inputs.to_box((-1, 2, 5, 5), "box", 12, 16)
    with pytest.raises(ValueError, match="x0 < x1"):
        inputs.to_box((5, 2, 5, 5), "box", 12, 16)
    with pytest.raises(ValueError, match="4 numbers"):
        inputs.to_box((1, 2, 3), "box", 12, 16)
    with pytest.raises(ValueError, match="finite"):
        inputs.to_box((0, 0, float("nan"), 3), "box", 12, 16)
    with pytest.raises(TypeError, match="box"):
        inputs.to_box("0 0 4 4", "box", 12, 16)
    with pytest.raises(ValueError, match=r"demos\[0\]\[1\]: box .* outside"):
        inputs.caption_demos([(_rgb(), (0, 0, 40, 4), "a red star")])


def test_caption_text_checked():
    with pytest.raises(ValueError, match=r"demos\[0\]\[2\]: caption is empty"):
        inputs.caption_demos([(_rgb(), (0, 0, 4, 4), "  ")])
    demo = inputs.caption_demos([(_rgb(), (0, 0, 4, 4), " a red star ")])[0]
    assert demo.text == "a red star" and demo.box == (0.0, 0.0, 4.0, 4.0)


def test_empty_demos_need_category():
    with pytest.raises(ValueError, match="demos is empty and no category"):
        inputs.require_prompt([], None)
    inputs.require_prompt([], "star")
    with pytest.raises(ValueError, match="category"):
        inputs.to_category("", "category")
