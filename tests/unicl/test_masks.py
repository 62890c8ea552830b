"""Reading a grey mask map back: fixed levels, the expected-IoU level, the guided-filter
refinement (unicl/masks.py)."""

import numpy as np
import pytest

from unicl.masks import (
    box_mean,
    check_threshold,
    expected_iou_level,
    guided_filter,
    mask_level,
    refine_map,
    threshold_mask,
)
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


# --------------------------------------------------------------------------- #
# refinement against the image
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("radius", [0, 1, 3])
def test_box_mean_is_the_mean_over_the_window_inside_the_image(radius):
    rng = np.random.default_rng(radius)
    x = rng.random((7, 9, 2))
    out = box_mean(x, radius)
    for i, j in [(0, 0), (3, 4), (6, 8), (2, 8)]:
        window = x[max(0, i - radius) : i + radius + 1, max(0, j - radius) : j + radius + 1]
        np.testing.assert_allclose(out[i, j], window.mean((0, 1)))


def test_guided_filter_by_a_flat_image_is_a_box_mean():
    """Without colour to follow, the fit in every window is its mean: a box filter twice."""
    rng = np.random.default_rng(0)
    values = rng.random((12, 10))
    flat = np.full((12, 10, 3), 0.5)
    np.testing.assert_allclose(
        guided_filter(flat, values, 2, 1e-3), box_mean(box_mean(values, 2), 2), atol=1e-9
    )


def test_guided_filter_is_linear_in_the_map():
    """Refining the mean of several answers equals the mean of the refined answers, so an
    ensemble can average refined maps."""
    rng = np.random.default_rng(1)
    image = rng.random((10, 11, 3))
    a, b = rng.random((10, 11)), rng.random((10, 11))
    both = guided_filter(image, (a + b) / 2, 3, 1e-3)
    each = (guided_filter(image, a, 3, 1e-3) + guided_filter(image, b, 3, 1e-3)) / 2
    np.testing.assert_allclose(both, each, atol=1e-9)


@pytest.mark.parametrize("shape", [(64, 64), (45, 61)])
@pytest.mark.parametrize("radius, step", [(16, 2), (32, 4)])
def test_the_fast_guided_filter_follows_the_exact_one(shape, radius, step):
    """Fitted on a coarser grid (odd sizes included), the output stays within a few hundredths
    of the exact filter's, and a constant map stays constant."""
    rng = np.random.default_rng(step)
    image = np.full((*shape, 3), 0.5)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for _ in range(4):
        cy, cx, r = rng.integers(5, 40), rng.integers(5, 40), rng.integers(5, 15)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.random(3)
    values = np.kron(rng.random((8, 8)), np.ones((8, 8)))[: shape[0], : shape[1]]
    exact = guided_filter(image, values, radius, 1e-3)
    fast = guided_filter(image, values, radius, 1e-3, step)
    assert fast.shape == shape
    assert np.abs(fast - exact).mean() < 0.01
    np.testing.assert_allclose(guided_filter(image, np.full(shape, 0.3), radius, 1e-3, step), 0.3)


def _two_objects() -> tuple[np.ndarray, np.ndarray]:
    """A red disc touching a blue square on grey; the disc is the object."""
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 26) ** 2 < 12**2
    square = (np.abs(yy - 32) < 9) & (xx >= 36) & (xx < 54) & ~disc
    image = np.full((64, 64, 3), 128, np.uint8)
    image[disc] = (220, 30, 30)
    image[square] = (30, 30, 220)
    return image, disc


def test_a_blocky_answer_spilling_onto_a_neighbour_snaps_to_the_object():
    """A coarse map (8 px cells: 0.8 on every cell a fifth or more disc, which spills onto the
    square and the background) comes back with the disc's edges."""
    image, disc = _two_objects()
    cover = disc.reshape(8, 8, 8, 8).mean((1, 3))  # share of each cell in the disc
    cells = np.where(cover > 0.2, 0.8, 0.02)
    grey = 255 * np.kron(cells, np.ones((8, 8)))
    raw = threshold_mask(grey, expected_iou_level(grey))
    refined_map = refine_map(grey, image, 16, 1e-3)
    refined = threshold_mask(refined_map, expected_iou_level(refined_map))

    def iou(m):
        return (m & disc).sum() / (m | disc).sum()

    assert refined_map.dtype == np.float32 and refined_map.min() >= 0 and refined_map.max() <= 255
    assert iou(raw) < 0.7
    assert iou(refined) > 0.95


def test_refine_map_takes_grey_and_rgba_images():
    image, _ = _two_objects()
    grey = np.zeros((64, 64), np.float32)
    grey[20:44, 14:38] = 200
    rgba = np.concatenate([image, np.full((64, 64, 1), 255, np.uint8)], axis=-1)
    np.testing.assert_allclose(refine_map(grey, rgba, 8, 1e-3), refine_map(grey, image, 8, 1e-3))
    assert refine_map(grey, image.mean(-1), 8, 1e-3).shape == (64, 64)
    with pytest.raises(ValueError, match="guided_filter"):
        guided_filter(image / 255.0, grey[:10], 8, 1e-3)


@pytest.mark.parametrize(
    "option, bad",
    [
        ("mask_refine", "crf"),
        ("mask_refine", True),
        ("refine_radius", 0),
        ("refine_radius", 1.5),
        ("refine_radius", "big"),
        ("refine_eps", 0.0),
        ("refine_eps", -1e-3),
        ("refine_eps", True),
    ],
)
def test_bad_refinement_options_name_the_option(option, bad):
    with pytest.raises(ValueError, match=f"segmentation: {option}"):
        SegmentationTask(**{option: bad})
