"""Reading a grey mask map back: fixed levels and the expected-IoU level (unicl/masks.py)."""

import numpy as np
import pytest

from unicl.masks import check_threshold, expected_iou_level, mask_level, threshold_mask
from unicl.tasks.segmentation import SegmentationTask


def _expected_iou(p: np.ndarray, keep: np.ndarray) -> float:
    inter = p[keep].sum()
    union = keep.sum() + p[~keep].sum()
    return 0.0 if union == 0 else inter / union


@pytest.mark.parametrize("seed", range(20))
def test_expected_iou_level_is_the_best_cut(seed):
    rng = np.random.default_rng(seed)
    grey = (rng.beta(0.5, 1.5, size=(7, 9)) * 255).astype(np.float32)
    grey[rng.random(grey.shape) < 0.3] = 40.0  # ties are kept or dropped together
    p = grey.astype(np.float64) / 255
    level = expected_iou_level(grey)
    mask = threshold_mask(grey, level)
    cuts = [grey >= v for v in np.unique(grey)] + [np.zeros(grey.shape, bool)]
    best = max(_expected_iou(p, c) for c in cuts)
    assert _expected_iou(p, mask) == pytest.approx(best)


def test_an_uncertain_object_is_kept_and_stray_pixels_are_not():
    grey = np.zeros((20, 20), np.float32)
    grey[5:15, 5:15] = 0.4 * 255  # the model is unsure, but only here
    grey[0, 0] = 0.05 * 255
    assert not threshold_mask(grey, mask_level(grey, 0.5)).any()  # half way: nothing
    mask = threshold_mask(grey, mask_level(grey, "expected_iou"))
    assert mask[5:15, 5:15].all() and mask.sum() == 100


def test_empty_and_full_maps():
    assert not threshold_mask(np.zeros((4, 4)), expected_iou_level(np.zeros((4, 4)))).any()
    full = np.full((4, 4), 255.0)
    assert threshold_mask(full, expected_iou_level(full)).all()


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, True, "half", None, "0.5"])
def test_bad_mask_threshold_names_the_option(bad):
    with pytest.raises(ValueError, match="mask_threshold"):
        check_threshold(bad, "segmentation")
    with pytest.raises(ValueError, match="segmentation: mask_threshold"):
        SegmentationTask(mask_threshold=bad)


def test_good_mask_thresholds():
    assert check_threshold(0.3, "x") == 0.3
    assert check_threshold("expected_iou", "x") == "expected_iou"
    assert mask_level(np.zeros(3), 0.25) == pytest.approx(63.75)
