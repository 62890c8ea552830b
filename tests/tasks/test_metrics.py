"""Metrics against values computed by hand (METEOR itself: one slow test)."""

import math

import numpy as np
import pytest

from unicl.tasks.metrics import (
    CaptionScorer,
    SegmentationMeter,
    binary_iou,
    box_iou,
    caption_scores,
    densecap_map,
    java_available,
    tokenize,
)


def _mask(shape, y0, y1, x0, x1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_binary_iou_by_hand():
    pred, target = _mask((6, 6), 0, 2, 0, 2), _mask((6, 6), 0, 2, 1, 3)  # overlap 2, union 6
    assert binary_iou(pred, target) == pytest.approx(2 / 6)
    assert binary_iou(np.zeros((3, 3)), np.zeros((3, 3), bool)) == 1.0
    assert binary_iou(pred.astype(np.uint8) * 255, target) == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="differ in shape"):
        binary_iou(pred, target[:5])


def test_segmentation_meter_definitions():
    meter = SegmentationMeter()
    meter.update(_mask((6, 6), 0, 2, 0, 2), _mask((6, 6), 0, 2, 1, 3), "a")  # I 2, U 6
    meter.update(_mask((4, 4), 0, 1, 0, 4), _mask((4, 4), 0, 1, 0, 3), "b")  # I 3, U 4
    meter.update(np.zeros((2, 2), bool), np.zeros((2, 2), bool), "a")  # empty: IoU 1, adds 0/0
    assert meter.foreground_iou == pytest.approx(5 / 10)
    assert meter.class_miou == pytest.approx((2 / 6 + 3 / 4) / 2)
    assert meter.sample_miou == pytest.approx((2 / 6 + 3 / 4 + 1) / 3)
    # MAE: 4 wrong pixels of 36, 1 of 16, 0 of 4
    assert meter.mae == pytest.approx((4 / 36 + 1 / 16 + 0) / 3)
    summary = meter.summary()
    assert summary["miou"] == meter.class_miou and summary["n"] == 3


def test_mae_of_soft_predictions():
    meter = SegmentationMeter()
    target = np.array([[True, False], [True, False]])
    meter.update(np.array([[0.8, 0.1], [0.6, 0.0]]), target)
    assert meter.mae == pytest.approx((0.2 + 0.1 + 0.4 + 0.0) / 4)
    assert meter.sample_miou == 1.0  # soft predictions are thresholded at 0.5 for IoU


def test_bleu4_and_cider_by_hand(monkeypatch):
    import unicl.tasks.metrics as metrics

    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)  # no METEOR: no Java start
    with pytest.warns(UserWarning, match="METEOR"):
        one = caption_scores(["A red star on the LEFT."], [["a red star on the right"]])
    # 1..4-gram precisions 5/6, 4/5, 3/4, 2/3, equal lengths: BLEU-4 = (1/3) ** (1/4)
    assert one["bleu4"] == pytest.approx((1 / 3) ** 0.25, abs=1e-6)
    # identical captions with no word shared between the two images: every n-gram has
    # idf log 2, each order's cosine is 1, and CIDEr-D = 10 * mean over n = 1..4 of 1
    with pytest.warns(UserWarning, match="METEOR"):
        two = caption_scores(
            ["a red star here", "one blue circle there"],
            ["a red star here", ["one blue circle there"]],
        )
    assert two["cider"] == pytest.approx(10.0) and two["bleu4"] == pytest.approx(1.0)
    assert tokenize("The  Blue-ish, circle!") == "the blue-ish circle"


def test_densecap_map_by_hand():
    gt = {1: [((0, 0, 10, 10), "red star"), ((20, 20, 30, 30), ["blue circle", "a blue disc"])]}
    preds = {
        1: [
            ((0, 0, 10, 10), "red star", 0.9),  # IoU 1, right words
            ((20, 20, 30, 35), "green circle", 0.8),  # IoU 2/3, wrong words
            ((0, 0, 10, 10), "red star", 0.7),  # duplicate of the first region
        ]
    }
    assert box_iou((20, 20, 30, 35), (20, 20, 30, 30)) == pytest.approx(2 / 3)

    def exact(hyps, refs):
        return [float(h in r) for h, r in zip(hyps, refs)]

    # IoU <= 0.6 and METEOR 0: both regions found -> AP 1 (4 such pairs); every other of the
    # 30 (IoU, METEOR) pairs finds only the star: recall 0.5 at precision 1 -> AP 51/101
    expected = (4 * 1.0 + 26 * 51 / 101) / 30
    assert densecap_map(preds, gt, scorer=exact) == pytest.approx(expected)
    assert densecap_map({1: []}, gt, scorer=exact) == 0.0
    with pytest.raises(ValueError, match="no ground truth"):
        densecap_map({7: []}, gt, scorer=exact)


def test_without_java_meteor_is_none_and_the_rest_is_reported(monkeypatch):
    import unicl.tasks.metrics as metrics

    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    with pytest.warns(UserWarning, match="METEOR needs Java"):
        scores = caption_scores(["a red star on the left"], ["a red star on the left"])
    assert scores["meteor"] is None and scores["bleu4"] == pytest.approx(1.0)
    with pytest.warns(UserWarning, match="METEOR needs Java"):
        assert densecap_map({1: []}, {1: []}) is None


def test_bad_caption_input():
    with pytest.raises(ValueError, match="2 predictions but 1"):
        CaptionScorer().score(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match=r"references\[0\] is empty"):
        CaptionScorer().score(["a"], [[]])


@pytest.mark.slow
@pytest.mark.skipif(not java_available(), reason="METEOR needs Java")
def test_meteor_and_corpus_scores():
    preds = ["a red star on the left", "a green square"]
    refs = [["a red star on the left"], ["a blue circle"]]
    with CaptionScorer() as scorer:
        scores = scorer.score(preds, refs)
        per_pair = scorer.meteor_scores(preds, refs)
        gt = {1: [((0, 0, 10, 10), "a red star on the left")]}
        found = densecap_map(
            {1: [((0, 0, 10, 10), "a red star on the left", 1.0)]}, gt, scorer=scorer.meteor_scores
        )
    assert per_pair[0] == pytest.approx(1.0) and per_pair[1] < 0.1
    assert scores["meteor"] == pytest.approx(np.mean(per_pair))
    assert 0 < scores["bleu4"] < 1 and math.isfinite(scores["cider"])
    assert found == pytest.approx(1.0)
