"""Square crop transforms: geometry by hand, padding, and crop -> uncrop round trips."""

import numpy as np
import pytest

from unicl.tasks.transforms import (
    box_from_crop,
    box_to_crop,
    crop_and_resize,
    full_square_crop_box,
    object_centred_crop_box,
    random_square_crop_box,
    uncrop_mask,
)


def test_object_centred_crop_box_by_hand():
    # box 20x10 centred at (50, 45); factor (1.5+2.5)/2 = 2 -> side 40, inside a 100x100 image
    assert object_centred_crop_box((40, 40, 60, 50), 100, 100) == (30, 25, 70, 65)
    # near a corner the square is shifted inside the image, keeping its side
    assert object_centred_crop_box((0, 0, 10, 10), 100, 100) == (0, 0, 32, 32)  # min_side
    assert object_centred_crop_box((90, 80, 100, 100), 100, 100) == (60, 60, 100, 100)
    # wider than the image (capped at its longer side): centred, padded on the short axis
    assert object_centred_crop_box((0, 0, 80, 40), 40, 80) == (0, -20, 80, 60)
    with pytest.raises(ValueError, match="box"):
        object_centred_crop_box((5, 5, 5, 9), 10, 10)


def test_random_crops_stay_in_bounds():
    rng = np.random.default_rng(0)
    for _ in range(50):
        x0, y0, x1, y1 = object_centred_crop_box((30, 50, 45, 58), 90, 120, rng)
        assert x1 - x0 == y1 - y0 >= 32 and 0 <= x0 and x1 <= 120 and 0 <= y0 and y1 <= 90
        # the object stays in the crop (jitter 0.1 of a side >= 1.5x the box)
        assert x0 <= 30 and 45 <= x1 and y0 <= 50 and 58 <= y1
        x0, y0, x1, y1 = random_square_crop_box(90, 120, rng)
        assert x1 - x0 == y1 - y0 and 45 <= x1 - x0 <= 90 and x1 <= 120 and y1 <= 90
    assert full_square_crop_box(40, 80) == (0, -20, 80, 60)


def test_crop_and_resize_pads_and_scales():
    img = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    out = crop_and_resize(img, (-2, 0, 2, 4), 4, "nearest")
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    assert (out[:, :2] == 0).all() and (out[:, 2:] == img[:, :2]).all()
    mask = np.zeros((10, 10), bool)
    mask[2:4, 2:4] = True
    small = crop_and_resize(mask, (0, 0, 10, 10), 5, "nearest")
    assert small.dtype == bool and small.sum() == 1 and small[1, 1]
    big = crop_and_resize(mask, (2, 2, 4, 4), 8, "nearest")
    assert big.all()
    with pytest.raises(ValueError, match="interpolation"):
        crop_and_resize(mask, (0, 0, 10, 10), 5, "lanczos9")


def test_uncrop_mask_inverts_the_crop():
    rng = np.random.default_rng(1)
    mask = np.zeros((60, 80), bool)
    mask[20:40, 30:50] = True
    for _ in range(10):
        crop = object_centred_crop_box((30, 20, 50, 40), 60, 80, rng)
        side = crop[2] - crop[0]
        # resizing to the crop's own side is lossless, so the round trip is exact
        back = uncrop_mask(crop_and_resize(mask, crop, side, "nearest"), crop, 60, 80)
        assert np.array_equal(back, mask)
        # through a smaller resolution it is exact up to the boundary
        back = uncrop_mask(crop_and_resize(mask, crop, 16, "nearest"), crop, 60, 80)
        iou = (back & mask).sum() / (back | mask).sum()
        assert iou > 0.7
    padded = (-10, -10, 70, 70)
    back = uncrop_mask(crop_and_resize(mask, padded, 80, "nearest"), padded, 60, 80)
    assert np.array_equal(back, mask)


def test_boxes_map_to_and_from_the_crop():
    crop = (10, 20, 50, 60)  # 40 px side -> 80 px: scale 2
    assert box_to_crop((20, 30, 30, 40), crop, 80) == (20.0, 20.0, 40.0, 40.0)
    assert box_to_crop((0, 0, 100, 100), crop, 80) == (0.0, 0.0, 80.0, 80.0)  # clipped
    assert box_from_crop((20, 20, 40, 40), crop, 80) == (20.0, 30.0, 30.0, 40.0)
