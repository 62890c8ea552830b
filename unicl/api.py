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

Batching: a list of queries with one demonstration set is one batch whose shared
prompt (category text + demonstrations) is prefilled once; every query then
continues from the same key/value cache (unicl/generate.py). Ensembling: several
demonstration sets for one query average their decoded mask images (grey levels
before the 127 threshold) and threshold the mean, as SegGPT users do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unicl import inputs
from unicl.inference import Engine, GeneratedAnswer
from unicl.inputs import ImageItem
from unicl.model_files import EXPORT_FILES, read_model


@dataclasses.dataclass
class SegmentationResult:
    """What `segment(..., return_details=True)` returns for one query."""

    mask: np.ndarray  # (H, W) bool at the query's resolution
    mask_image: np.ndarray  # (H, W) float32 grey level 0-255 before thresholding
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
    `seed` (int), and `max_tokens` (int >= 1, a cap on the length of a generated caption).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ---- properties -------------------------------------------------------- #

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def config(self):
        """The model's UniclConfig."""
        return self.engine.cfg

    @property
    def tasks(self) -> list[str]:
        return sorted(self.engine.tasks)

    def __repr__(self) -> str:
        return f"InContextModel({self.engine.describe()})"

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
            **sampling: temperature, top_k, top_p, seed, max_tokens.

        Returns:
            An (H, W) bool mask at the query's own resolution (a list for a list of
            queries), or SegmentationResult(s) with `return_details=True`.
        """
        self.engine.require_task("segmentation")
        _check_flag(return_details, "return_details")
        category = inputs.to_category(category)
        queries, single = _queries(query)
        images = [
            inputs.to_image(q, "query" if single else f"query[{i}]") for i, q in enumerate(queries)
        ]
        demo_sets = [inputs.segmentation_demos(demos, "demos")]
        for j, extra in enumerate(_ensemble(ensemble)):
            demo_sets.append(inputs.segmentation_demos(extra, f"ensemble[{j}]"))
        for j, demo_set in enumerate(demo_sets):
            inputs.require_prompt(demo_set, category, "demos" if j == 0 else f"ensemble[{j - 1}]")
        options = self.engine.sampling(sampling)
        per_set: list[list[GeneratedAnswer]] = []
        for demo_set in demo_sets:
            per_set.append(
                self.engine.segment_batch(
                    [ImageItem(image) for image in images],
                    [ImageItem(d.image, mask=d.mask) for d in demo_set],
                    category,
                    options,
                )
            )
        results = []
        for i in range(len(images)):
            answers = [answers_of_set[i] for answers_of_set in per_set]
            grey = np.mean([a.mask_image for a in answers], axis=0).astype(np.float32)  # (H, W)
            # one prompt: the task's own post-processing; several: threshold the mean image
            mask = answers[0].mask if len(answers) == 1 else self.engine.threshold_mask(grey)
            results.append(
                SegmentationResult(
                    mask=mask,
                    mask_image=grey,
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
            **sampling: temperature, top_k, top_p, seed, max_tokens.

        Returns:
            The caption (a list for a list of queries), or CaptionResult(s).
        """
        self.engine.require_task("captioning")
        _check_flag(return_details, "return_details")
        category = inputs.to_category(category)
        queries, single = _queries(query)
        boxes = [box] if single else _boxes_for(box, len(queries))
        items = []
        for i, (q, b) in enumerate(zip(queries, boxes)):
            name = "query" if single else f"query[{i}]"
            image = inputs.to_image(q, name)
            items.append(
                ImageItem(
                    image, box=inputs.to_box(b, "box" if single else f"box[{i}]", *image.shape[:2])
                )
            )
        demo_set = inputs.caption_demos(demos, "demos")
        inputs.require_prompt(demo_set, category, "demos")
        options = self.engine.sampling(sampling)
        answers = self.engine.caption_batch(
            items, [ImageItem(d.image, box=d.box, text=d.text) for d in demo_set], category, options
        )
        results = [CaptionResult(text=a.text, tokens=a.tokens, probs=a.probs) for a in answers]
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
        Engine.from_files(files, device=device, dtype=dtype, allow_plugins=allow_plugins)
    )


__all__ = ["EXPORT_FILES", "CaptionResult", "InContextModel", "SegmentationResult", "load"]
