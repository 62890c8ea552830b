"""Evaluation metrics: segmentation MIoU / MAE, caption BLEU-4 / METEOR / CIDEr, DenseCap mAP.

The paper's results (arXiv 2312.02520, Table 4) report, for segmentation, MIoU
and MAE in SegGPT's protocol and, for region captioning, BLEU-4, METEOR and CIDEr
(pycocoevalcap) and DenseCap's mAP.

Segmentation (binary masks, `SegmentationMeter`):
- `foreground_iou`: intersection and union summed over all samples, then divided.
- `class_miou`: the same accumulation per category, then the mean over categories.
  This is the few-shot segmentation protocol SegGPT follows (and that the paper's
  "MIoU" is compared against); it is what unicl reports as MIoU.
- `sample_miou`: the mean over samples of each sample's own IoU (a sample whose
  prediction and target are both empty counts 1).
- `mae`: mean absolute difference between the predicted mask (bool, or soft in
  [0, 1], or 0-255) and the binary target, averaged per pixel then over samples.

Captions are lower-cased and split on non-alphanumerics before scoring (the COCO
PTB tokenizer needs Stanford CoreNLP; for short region phrases the two agree).
METEOR runs pycocoevalcap's Java jar; without Java it is reported as None with a
warning and the other scores are still computed.
"""

from __future__ import annotations

import re
import shutil
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from unicl.masks import threshold_mask
from unicl.tasks.vg import PhraseMatcher, builtin_synonyms

IOU_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
METEOR_THRESHOLDS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25)


# ----------------------------------------------------------------------------- segmentation
def _as_binary(mask, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be an (H, W) mask, got shape {mask.shape}")
    if mask.dtype == bool:
        return mask
    return threshold_mask(mask) if mask.dtype == np.uint8 else mask > 0.5  # 0-255 or [0, 1]


def _as_soft(mask) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask.astype(np.float64)
    if mask.dtype == np.uint8:
        return mask / 255.0
    return np.clip(mask.astype(np.float64), 0.0, 1.0)


def binary_iou(pred, target) -> float:
    """IoU of two (H, W) masks; 1.0 when both are empty."""
    p, t = _as_binary(pred, "pred"), _as_binary(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred {p.shape} and target {t.shape} masks differ in shape")
    union = np.logical_or(p, t).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, t).sum() / union)


class SegmentationMeter:
    """Accumulates binary segmentation results; see the module docstring for definitions."""

    def __init__(self) -> None:
        self.intersection = 0
        self.union = 0
        self.per_class: dict[str, list[int]] = {}  # category -> [intersection, union]
        self.sample_ious: list[float] = []
        self.sample_maes: list[float] = []

    def update(self, pred, target, category: str = "") -> float:
        """Add one sample (pred may be bool, 0-255 or soft in [0, 1]); returns its IoU."""
        p, t = _as_binary(pred, "pred"), _as_binary(target, "target")
        if p.shape != t.shape:
            raise ValueError(f"pred {p.shape} and target {t.shape} masks differ in shape")
        inter, union = int(np.logical_and(p, t).sum()), int(np.logical_or(p, t).sum())
        self.intersection += inter
        self.union += union
        acc = self.per_class.setdefault(category, [0, 0])
        acc[0] += inter
        acc[1] += union
        iou = 1.0 if union == 0 else inter / union
        self.sample_ious.append(iou)
        self.sample_maes.append(float(np.abs(_as_soft(pred) - t).mean()))
        return iou

    def __len__(self) -> int:
        return len(self.sample_ious)

    @property
    def foreground_iou(self) -> float:
        return 1.0 if self.union == 0 else self.intersection / self.union

    @property
    def class_miou(self) -> float:
        ious = [1.0 if u == 0 else i / u for i, u in self.per_class.values()]
        return float(np.mean(ious)) if ious else float("nan")

    @property
    def sample_miou(self) -> float:
        return float(np.mean(self.sample_ious)) if self.sample_ious else float("nan")

    @property
    def mae(self) -> float:
        return float(np.mean(self.sample_maes)) if self.sample_maes else float("nan")

    def summary(self) -> dict[str, float]:
        """All metrics; "miou" is `class_miou`, the MIoU unicl reports (see module docstring)."""
        return {
            "miou": self.class_miou,
            "foreground_iou": self.foreground_iou,
            "sample_miou": self.sample_miou,
            "mae": self.mae,
            "n": len(self),
        }


# ----------------------------------------------------------------------------- captions
def tokenize(text: str) -> str:
    """Lower-case, keep alphanumeric words (and in-word apostrophes/hyphens), single spaces."""
    return " ".join(re.findall(r"[a-z0-9]+(?:['-][a-z0-9]+)*", text.lower()))


def java_available() -> bool:
    return shutil.which("java") is not None


class CaptionScorer:
    """BLEU-4, METEOR and CIDEr via pycocoevalcap; keeps one METEOR (Java) process alive.

    METEOR's first call starts Java (several seconds); reuse one scorer across
    evaluations and call `close()` (or use it as a context manager) when done.
    """

    def __init__(self) -> None:
        self._meteor = None

    def __enter__(self) -> CaptionScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._meteor = None  # pycocoevalcap's Meteor stops its Java process on deletion

    def meteor_scores(self, predictions: Sequence[str], references: Sequence[Sequence[str]]):
        """Per-pair METEOR scores (list of floats), or None when Java is missing."""
        if not java_available():
            warnings.warn(
                "METEOR needs Java (the `java` command) and is skipped: install a Java runtime "
                "(e.g. openjdk-17-jre-headless) to report it",
                stacklevel=2,
            )
            return None
        if not predictions:
            return []
        if self._meteor is None:
            from pycocoevalcap.meteor.meteor import Meteor

            self._meteor = Meteor()
        gts, res = _as_coco(predictions, references)
        _, per_item = self._meteor.compute_score(gts, res)
        return [float(s) for s in per_item]

    def score(self, predictions: Sequence[str], references) -> dict[str, float | None]:
        """Corpus scores: {"bleu4", "meteor" (None without Java), "cider", "n"}.

        `references[i]` is one reference string or a list of them for prediction i.
        """
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider

        references = _check_pairs(predictions, references)
        gts, res = _as_coco(predictions, references)
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        cider, _ = Cider().compute_score(gts, res)
        meteor = self.meteor_scores(predictions, references)
        return {
            "bleu4": float(bleu[3]),
            "meteor": None if meteor is None else float(np.mean(meteor)),
            "cider": float(cider),
            "n": len(predictions),
        }


def _check_pairs(predictions, references) -> list[list[str]]:
    if len(predictions) != len(references):
        raise ValueError(
            f"got {len(predictions)} predictions but {len(references)} reference lists"
        )
    if not predictions:
        raise ValueError("predictions: nothing to score")
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    empty = [i for i, r in enumerate(refs) if not r]
    if empty:
        raise ValueError(f"references[{empty[0]}] is empty")
    return refs


def _as_coco(predictions, references):
    """pycocoevalcap's {id: [tokenized strings]} dicts."""
    gts = {i: [tokenize(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [tokenize(p)] for i, p in enumerate(predictions)}
    return gts, res


def caption_scores(predictions: Sequence[str], references) -> dict[str, float | None]:
    """One-off corpus BLEU-4 / METEOR / CIDEr (see `CaptionScorer.score`)."""
    with CaptionScorer() as scorer:
        return scorer.score(predictions, references)


# ----------------------------------------------------------------------------- DenseCap mAP
def box_iou(a, b) -> float:
    """IoU of two (x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _interpolated_ap(tp: np.ndarray, fp: np.ndarray, npos: int) -> float:
    """101-point interpolated average precision from score-sorted TP / FP flags."""
    ctp, cfp = np.cumsum(tp), np.cumsum(fp)
    recall = ctp / max(npos, 1)
    precision = ctp / np.maximum(ctp + cfp, 1e-12)
    ap = 0.0
    for k in range(101):
        hit = precision[recall >= k / 100]
        ap += (hit.max() if hit.size else 0.0) / 101
    return float(ap)


def densecap_map(
    predictions: dict,
    ground_truth: dict,
    scorer: Callable[[list[str], list[list[str]]], list[float]] | None = None,
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
    meteor_thresholds: Sequence[float] = METEOR_THRESHOLDS,
) -> float | None:
    """DenseCap's mean AP over IoU x METEOR thresholds (arXiv 2312.02520, Table 4).

    predictions: image id -> [(box, caption, score), ...]
    ground_truth: image id -> [(box, caption or [captions]), ...]
    scorer: per-pair caption similarity; default METEOR (None is returned without Java).

    All predictions are ranked by score. Each is matched to the ground-truth
    region of its image with the highest box IoU; it is a true positive at
    (t, m) when that IoU >= t, the region was not matched by a higher-scored
    prediction, and its METEOR against the region's captions is >= m. The AP of
    every (t, m) pair is 101-point interpolated; the result is their mean.
    """
    unknown = sorted(set(predictions) - set(ground_truth), key=str)
    if unknown:
        raise ValueError(f"predictions: image ids {unknown[:5]} have no ground truth")
    flat = []  # (score, image, caption, best_iou, best_gt)
    for image, dets in predictions.items():
        gts = ground_truth[image]
        for k, det in enumerate(dets):
            if len(det) != 3:
                raise ValueError(f"predictions[{image!r}][{k}] must be (box, caption, score)")
            box, caption, score = det
            ious = [box_iou(box, g[0]) for g in gts]
            best = int(np.argmax(ious)) if ious else -1
            flat.append((float(score), image, caption, ious[best] if ious else 0.0, best))
    flat.sort(key=lambda d: -d[0])
    npos = sum(len(g) for g in ground_truth.values())

    # score each prediction against its best region's captions (none: an image without regions)
    scored = [i for i, d in enumerate(flat) if d[4] >= 0]
    hyps = [flat[i][2] for i in scored]
    refs = []
    for i in scored:
        cap = ground_truth[flat[i][1]][flat[i][4]][1]
        refs.append([cap] if isinstance(cap, str) else list(cap))
    if scorer is None:
        with CaptionScorer() as caption_scorer:
            values = caption_scorer.meteor_scores(hyps, refs)
        if values is None:
            return None
    else:
        values = scorer(hyps, refs)
    meteor = np.zeros(len(flat))
    meteor[scored] = values
    aps = []
    for t in iou_thresholds:
        used: set = set()
        matched = np.zeros(len(flat), bool)  # IoU >= t and the region still free
        for i, (_, image, _, iou, best) in enumerate(flat):
            if iou >= t and (image, best) not in used:
                used.add((image, best))
                matched[i] = True
        for m in meteor_thresholds:
            tp = matched & (meteor >= m)
            aps.append(_interpolated_ap(tp.astype(float), (~tp).astype(float), npos))
    return float(np.mean(aps))


# --------------------------------------------------------------------------- #
# grounded captions: does the caption name the region's shape and colour?
# --------------------------------------------------------------------------- #


def described_colour(text: str, colours: set[str]) -> str | None:
    """The colour a region phrase gives its own object: the predicate's ("the plus next to a
    black cross is red": red) when the phrase ends in "is <colour>", else its first colour
    word ("a red plus next to a black cross"); None without a colour word of `colours`
    (lower case)."""
    words = re.findall(r"[a-z]+", text.lower())
    if len(words) >= 2 and words[-2] == "is" and words[-1] in colours:
        return words[-1]
    return next((w for w in words if w in colours), None)


def grounding_accuracy(
    predictions: Sequence[str],
    categories: Sequence[str],
    references: Sequence[str],
    all_categories: Sequence[str],
    colours: Sequence[str],
) -> dict[str, float | None]:
    """Shape-word and colour-word accuracy of generated region captions (in [0, 1]).

    shape: the first category noun of the caption (a name or a synonym, tasks/vg.py
    PhraseMatcher over `all_categories`, so naming another category counts as wrong) is the
    region's category. colour: over the references that name a colour of `colours`, the
    caption's `described_colour` is the reference's. None when nothing could be scored.
    """
    if not len(predictions) == len(categories) == len(references):
        raise ValueError(
            "grounding_accuracy: predictions, categories and references differ in length"
        )
    matcher = PhraseMatcher(builtin_synonyms(sorted(set(all_categories) | set(categories))))
    words = {c.lower() for c in colours}
    shape_hits = [matcher.match(p) == c for p, c in zip(predictions, categories)]
    colour_hits = [
        described_colour(p, words) == want
        for p, r in zip(predictions, references)
        if (want := described_colour(r, words)) is not None
    ]
    return {
        "shape_acc": float(np.mean(shape_hits)) if shape_hits else None,
        "colour_acc": float(np.mean(colour_hits)) if colour_hits else None,
    }
