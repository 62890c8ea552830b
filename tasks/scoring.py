"""How `unicl eval` scores a task's answers (docs/evaluation.md).

A task's `scorer(baselines)` returns one `Scorer` for a whole evaluation; for each group of
episodes (one category split at one shot count) the evaluator hands it the episodes and the
model's predictions (after ensembling, `Task.combine`: each has the task's answer as `value`,
the generated ids as `tokens` and their probabilities as `probs`) and gets back the rows:
method -> (number of queries, {metric: value}). Methods are "model" and the task's own
reference baselines, scored on the same episodes.

- `ExactMatchScorer` (the default of every task): % of answers equal, as text, to the
  query's reference answer (`Task.reference`).
- `SegmentationScorer`: mIoU and MAE, with the "all background" and "copy demo mask"
  baselines.
- `CaptioningScorer`: BLEU-4, METEOR, CIDEr, DenseCap mAP, and whether the caption names
  the region's shape and colour.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import numpy as np

from unicl.tasks.metrics import CaptionScorer, SegmentationMeter, densecap_map, grounding_accuracy
from unicl.tasks.world_shapes import CATEGORY_BY_NAME, COLOURS

MODEL = "model"
#: the model's answers to the same queries with another category's demonstrations
#: (`unicl eval --other-demos`): what a model that reads the category from them loses
MODEL_OTHER_DEMOS = "model, other category's demos"
BASELINE_BACKGROUND = "all background"
BASELINE_COPY = "copy demo mask"

Rows = dict[str, tuple[int, dict[str, Any]]]


class Scorer(abc.ABC):
    """Scores one task's answers, group by group (see the module docstring)."""

    @abc.abstractmethod
    def score(self, episodes: Sequence[Any], answers: Sequence[Any], shots: int) -> Rows:
        """Rows of one group: method -> (queries, metrics)."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release what the scorer keeps between groups (default: nothing)."""


class ExactMatchScorer(Scorer):
    """% of answers that equal the reference answer, as stripped text."""

    def __init__(self, task: Any) -> None:
        self.task = task

    def score(self, episodes: Sequence[Any], answers: Sequence[Any], shots: int) -> Rows:
        hits = [str(a.value).strip() == self.task.reference(e) for e, a in zip(episodes, answers)]
        accuracy = 100.0 * float(np.mean(hits)) if hits else None
        return {MODEL: (len(hits), {"accuracy": accuracy})}


class SegmentationScorer(Scorer):
    """Class-wise mIoU and MAE of the masks, next to the reference baselines."""

    def __init__(self, baselines: bool = True) -> None:
        self.baselines = baselines

    def score(self, episodes: Sequence[Any], answers: Sequence[Any], shots: int) -> Rows:
        meters = {MODEL: SegmentationMeter()}
        if self.baselines:
            meters[BASELINE_BACKGROUND] = SegmentationMeter()
            if shots > 0:
                meters[BASELINE_COPY] = SegmentationMeter()
        for episode, answer in zip(episodes, answers):
            truth = episode.meta["query_record"].load_mask()  # (H, W) bool
            meters[MODEL].update(answer.value.mask, truth, episode.category)
            if BASELINE_BACKGROUND in meters:
                meters[BASELINE_BACKGROUND].update(np.zeros_like(truth), truth, episode.category)
            if BASELINE_COPY in meters:
                meters[BASELINE_COPY].update(copy_demo_mask(episode), truth, episode.category)
        return {
            name: (len(m), {"miou": 100.0 * m.class_miou, "mae": m.mae})
            for name, m in meters.items()
        }


def copy_demo_mask(episode: Any) -> np.ndarray:
    """The "copy demo mask" baseline: demo 1's mask in its view, pasted through the query's view."""
    demo_mask = np.asarray(episode.pairs[0][1].payload, bool)  # (S, S) in demo 1's view
    height, width = episode.meta["query_size"]
    view = episode.meta["query_view"]
    if demo_mask.shape != (view.size, view.size):
        raise ValueError(f"demo mask of shape {demo_mask.shape} is not in a {view.size} px view")
    return view.unapply_mask(demo_mask, height, width)


class CaptioningScorer(Scorer):
    """BLEU-4, METEOR, CIDEr, DenseCap mAP and shape / colour words of region captions.

    Keeps one METEOR (Java) process for the whole evaluation: `close()` ends it.
    """

    def __init__(self) -> None:
        self._captions: Any = None

    def close(self) -> None:
        if self._captions is not None:
            self._captions.close()
            self._captions = None

    def score(self, episodes: Sequence[Any], answers: Sequence[Any], shots: int) -> Rows:
        if self._captions is None:
            self._captions = CaptionScorer()
        preds, refs, dets, truth = [], [], {}, {}
        for episode, answer in zip(episodes, answers):
            record = episode.meta["query_record"]
            text = answer.value.text
            preds.append(text)
            refs.append([record.phrase])
            # region captioning: the box is given; a caption's score is its mean log-probability
            probs = np.clip(np.asarray(answer.probs, np.float64), 1e-12, 1.0)
            score = float(np.log(probs).mean()) if probs.size else 0.0
            key = episode.meta["query_id"]
            dets[key] = [(record.box, text, score)]
            truth[key] = [(record.box, record.phrase)]
        scores = self._captions.score(preds, refs)
        categories = [e.meta["query_record"].category for e in episodes]
        grounding = caption_grounding(preds, categories, [r[0] for r in refs])
        mean_ap = densecap_map(dets, truth, scorer=self._captions.meteor_scores)
        metrics = {
            "bleu4": 100.0 * scores["bleu4"],
            "meteor": None if scores["meteor"] is None else 100.0 * scores["meteor"],
            "cider": 100.0 * scores["cider"],
            "map": None if mean_ap is None else 100.0 * mean_ap,
            **{k: None if v is None else 100.0 * v for k, v in grounding.items()},
        }
        return {MODEL: (len(preds), metrics)}


def caption_grounding(predictions, categories, references) -> dict[str, float | None]:
    """Shape- and colour-word accuracy (tasks/metrics.py `grounding_accuracy`).

    Candidate nouns: the evaluated categories, and all shapes-world categories when every
    evaluated one is a world category (so that naming any other shape counts as wrong);
    colour words: the world's palette names, which are the basic colour terms.
    """
    names = set(categories)
    if names <= set(CATEGORY_BY_NAME):
        names |= set(CATEGORY_BY_NAME)
    return grounding_accuracy(predictions, categories, references, sorted(names), list(COLOURS))
