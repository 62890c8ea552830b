"""The researcher's interface: `unicl.load` and `InContextModel` (README.md "Python API").

    import unicl
    model = unicl.load("runs/shapes-tiny")
    mask = model.segment(query=img, demos=[(img1, mask1), (img2, mask2)], category="star")
    text = model.caption(query=img, box=(x0, y0, x1, y1), demos=[(img1, box1, "a red star")])

A prompt is laid out exactly as in training (arXiv 2312.02520, tasks and sequence
layout): the task plugin turns each demonstration and the query into an in-context
pair, the packer turns the episode into tokens, the decoder generates the query's
answer under the task's constraints, and the task maps the generated tokens back to
a mask at the query's own resolution or to a caption string.

Any task the model was trained for, a plugin task included, answers through `predict`
(the task says what a demonstration and a query hold, tasks/base.py `demo_fields`);
`segment` and `caption` are its two built-in forms with their own arguments.

Batching: a list of queries with one demonstration set is one batch whose shared
prompt (category text + demonstrations) is prefilled once; every query then
continues from the same key/value cache (unicl/generate.py), and the
demonstrations' codes are computed once. Ensembling: several demonstration sets for
one query are combined by the task (`Task.combine`; segmentation averages the grey
mask maps before thresholding them once, as SegGPT users do).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unicl import inputs
from unicl.model_files import EXPORT_FILES, read_model
from unicl.predictor import Prediction, Predictor
from unicl.tasks.user import UserItem


@dataclasses.dataclass
class SegmentationResult:
    """What `segment(..., return_details=True)` returns for one query."""

    mask: np.ndarray  # (H, W) bool at the query's resolution
    mask_image: np.ndarray  # (H, W) float32 grey level 0-255 before thresholding
    threshold: float  # the grey level it was cut at: mask == (mask_image > threshold)
    tokens: list[np.ndarray]  # generated global ids, one array per demo set
    probs: list[np.ndarray]  # probability of each generated token, aligned with `tokens`


@dataclasses.dataclass
class CaptionResult:
    """What `caption(..., return_details=True)` returns for one query."""

    text: str
    tokens: np.ndarray  # generated global ids
    probs: np.ndarray  # probability of each generated token


class InContextModel:
    """A trained unicl model ready for in-context prompts (see the module docstring).

    Build it with `unicl.load(path)`. `sampling` options accepted by `segment` and
    `caption` (checked by unicl/generate.py `sampling_options`): `temperature` (a finite
    number >= 0; 0 = greedy, the default), `top_k` (int >= 1), `top_p` (in (0, 1]),
    `seed` (int), `max_tokens` (int >= 1, a cap on the length of a generated caption),
    `num_beams` (int >= 1: beam search, 1 = greedy) and `length_penalty` (beams ranked by
    log probability / length ** it); the last two default to the task's config
    (`tasks.<task>.num_beams`, `length_penalty`).
    """

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    # ---- properties -------------------------------------------------------- #

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    @property
    def config(self):
        """The model's UniclConfig."""
        return self.predictor.cfg

    @property
    def tasks(self) -> list[str]:
        return sorted(self.predictor.tasks)

    def __repr__(self) -> str:
        return f"InContextModel({self.predictor.describe()})"

    # ---- any task ------------------------------------------------------------ #

    def predict(
        self,
        task: str,
        query: Any,
        demos: Sequence[Any] | None = None,
        category: str | None = None,
        *,
        return_details: bool = False,
        **sampling: Any,
    ):
        """Answer `query` for `task` from its demonstrations: the form of every task.

        Args:
            task: a task this model was trained for (`model.tasks`), a plugin's included.
            query: the query: one image when the task's query is an image alone, else a
                tuple of the task's `query_fields` (captioning: (image, box)); or a list
                of queries that share `demos`.
            demos: tuples of the task's `demo_fields` (segmentation: (image, mask);
                captioning: (image, box, caption); a plugin's own, e.g. (image, text)).
            category: the category name as text (optional with demos).
            return_details: return `Prediction`s (answer, generated ids, probabilities).
            **sampling: temperature, top_k, top_p, seed, max_tokens, num_beams, length_penalty.

        Returns:
            The task's answer (tasks/segmentation.py MaskAnswer, tasks/captioning.py
            CaptionAnswer, or what a plugin task's `postprocess` returns), a list for a list
            of queries.
        """
        the_task = self.predictor.require_task(task)
        _check_flag(return_details, "return_details")
        category = inputs.to_category(category)
        fields = the_task.query_fields
        single = inputs.is_image_like(query) if len(fields) == 1 else _is_one_query(query)
        queries = [query] if single else _queries(query)[0]
        items = []
        for i, q in enumerate(queries):
            name = "query" if single else f"query[{i}]"
            values = [q] if len(fields) == 1 else inputs.query_values(q, fields, name)
            items.append(inputs.user_item(dict(zip(fields, values)), _names(name, fields)))
        demo_set = inputs.demo_items(demos, the_task.demo_fields, "demos")
        inputs.require_prompt(demo_set, category, "demos")
        options = self.predictor.sampling(sampling)
        episodes = self.predictor.prompts(task, items, demo_set, category)
        results = self.predictor.answer(episodes, options)
        out = results if return_details else [r.value for r in results]
        return out[0] if single else out

    # ---- segmentation ------------------------------------------------------ #

    def segment(
        self,
        query: Any,
        demos: Sequence[Any] | None = None,
        category: str | None = None,
        *,
        ensemble: Sequence[Sequence[Any]] | None = None,
        return_details: bool = False,
        **sampling: Any,
    ):
        """Generate the mask of `category` in `query` from (image, mask) demonstrations.

        Args:
            query: one image (PIL, (H, W, 3) uint8 array or path; unicl/inputs.py lists
                the accepted forms), or a list of images that share `demos` (one batch;
                the demonstrations are prefilled once).
            demos: (image, mask) pairs of the same category, each mask with at least one
                foreground pixel; may be empty when `category` is given (0-shot).
            category: the category name as text (optional with demos).
            ensemble: more demonstration sets (each a list of (image, mask) pairs) to
                prompt with as well; the decoded mask images of `demos` and of every
                set are averaged before thresholding.
            return_details: return `SegmentationResult`s instead of bool masks.
            **sampling: temperature, top_k, top_p, seed, max_tokens, num_beams, length_penalty.

        Returns:
            An (H, W) bool mask at the query's own resolution (a list for a list of
            queries), or SegmentationResult(s) with `return_details=True`.
        """
        task = self.predictor.require_task("segmentation")
        _check_flag(return_details, "return_details")
        category = inputs.to_category(category)
        queries, single = _queries(query)
        items = [
            UserItem(inputs.to_image(q, "query" if single else f"query[{i}]"))
            for i, q in enumerate(queries)
        ]
        demo_sets = [inputs.segmentation_demos(demos, "demos")]
        for j, extra in enumerate(_ensemble(ensemble)):
            demo_sets.append(inputs.segmentation_demos(extra, f"ensemble[{j}]"))
        for j, demo_set in enumerate(demo_sets):
            inputs.require_prompt(demo_set, category, "demos" if j == 0 else f"ensemble[{j - 1}]")
        options = self.predictor.sampling(sampling)
        per_set: list[list[Prediction]] = []
        for demo_set in demo_sets:
            episodes = self.predictor.prompts("segmentation", items, demo_set, category)
            per_set.append(self.predictor.answer(episodes, options))
        results = []
        for i in range(len(items)):
            answers = [answers_of_set[i] for answers_of_set in per_set]
            combined = task.combine([a.value for a in answers])
            results.append(
                SegmentationResult(
                    mask=combined.mask,
                    mask_image=combined.mask_image,
                    threshold=combined.threshold,
                    tokens=[a.tokens for a in answers],
                    probs=[a.probs for a in answers],
                )
            )
        out = results if return_details else [r.mask for r in results]
        return out[0] if single else out

    # ---- captioning -------------------------------------------------------- #

    def caption(
        self,
        query: Any,
        box: Any,
        demos: Sequence[Any] | None = None,
        category: str | None = None,
        *,
        return_details: bool = False,
        **sampling: Any,
    ):
        """Caption the region `box` of `query` from (image, box, caption) demonstrations.

        Args:
            query: one image, or a list of images sharing `demos` (one batch).
            box: (x0, y0, x1, y1) in the query's pixels; a list of boxes (one per
                query) for a list of queries.
            demos: (image, box, caption) triples; may be empty when `category` is given.
            category: the region's category name as text (optional with demos).
            return_details: return `CaptionResult`s instead of strings.
            **sampling: temperature, top_k, top_p, seed, max_tokens, num_beams, length_penalty.

        Returns:
            The caption (a list for a list of queries), or CaptionResult(s).
        """
        self.predictor.require_task("captioning")
        _check_flag(return_details, "return_details")
        category = inputs.to_category(category)
        queries, single = _queries(query)
        boxes = [box] if single else _boxes_for(box, len(queries))
        items = []
        for i, (q, b) in enumerate(zip(queries, boxes)):
            name = "query" if single else f"query[{i}]"
            names = [name, "box" if single else f"box[{i}]"]
            items.append(inputs.user_item({"image": q, "box": b}, names))
        demo_set = inputs.caption_demos(demos, "demos")
        inputs.require_prompt(demo_set, category, "demos")
        options = self.predictor.sampling(sampling)
        episodes = self.predictor.prompts("captioning", items, demo_set, category)
        answers = self.predictor.answer(episodes, options)
        results = [CaptionResult(a.value.text, a.tokens, a.probs) for a in answers]
        out = results if return_details else [r.text for r in results]
        return out[0] if single else out


def _queries(query: Any) -> tuple[list[Any], bool]:
    """One query or a list of them -> (list, was it a single one)."""
    if inputs.is_image_like(query):
        return [query], True
    if isinstance(query, Sequence) and query:
        return list(query), False
    raise TypeError(
        f"query: expected {inputs.IMAGE_KINDS} or a non-empty list of them, got {query!r}"
    )


def _boxes_for(box: Any, n: int) -> list[Any]:
    """The boxes of n queries: a list of n boxes, or an (n, 4) array."""
    if (
        not isinstance(box, (Sequence, np.ndarray))
        or isinstance(box, str)
        or len(box) != n
        or not all(isinstance(b, (Sequence, np.ndarray)) and not isinstance(b, str) for b in box)
    ):
        raise ValueError(f"box: for {n} queries give a list of {n} boxes (x0, y0, x1, y1)")
    return list(box)


def _ensemble(ensemble: Any) -> list[Any]:
    """`ensemble=`: None or a list of demonstration sets."""
    if ensemble is None:
        return []
    if inputs.is_image_like(ensemble) or not isinstance(ensemble, Sequence):
        raise TypeError(
            "ensemble: expected a list of demonstration sets (each a list of (image, mask) "
            f"pairs), got {type(ensemble).__name__}"
        )
    return list(ensemble)


def _is_one_query(query: Any) -> bool:
    """A query of several fields is a tuple; a list of queries is a list."""
    return isinstance(query, tuple)


def _names(name: str, fields: Sequence[str]) -> list[str]:
    """Message names of a query's values: `query` alone, else `query[j]` per field."""
    return [name] if len(fields) == 1 else [f"{name}[{j}]" for j in range(len(fields))]


def _check_flag(value: Any, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {value!r}")


def load(
    path: str | Path,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    allow_plugins: bool = False,
) -> InContextModel:
    """Load a model for in-context prompting from a run or an exported directory.

    Loading reads and never writes, and runs no code from the files: weights come from
    safetensors or a tensors-only checkpoint load (unicl/model_files.py).

    Args:
        path: an exported model directory (`unicl export`: config.yaml,
            model.safetensors, tokenizers/<name>/) or a training run directory
            (its latest checkpoint is read in memory).
        device: torch device; default CUDA when available, else CPU.
        dtype: parameter dtype (e.g. "bfloat16" on GPU); default float32.
        allow_plugins: import the plugin modules the model's config lists under
            `plugins:` (importing a module runs its code: allow only models you trust).

    Raises:
        FileNotFoundError: the directory or one of its files is missing (named).
        ValueError: a file is unreadable, unsafe or holds non-finite weights, or the
            config names plugins and `allow_plugins` is False.
    """
    files = read_model(path)
    return InContextModel(
        Predictor.from_files(files, device=device, dtype=dtype, allow_plugins=allow_plugins)
    )


__all__ = [
    "EXPORT_FILES",
    "CaptionResult",
    "InContextModel",
    "Prediction",
    "SegmentationResult",
    "load",
]
