"""Class-aware in-context segmentation (arXiv 2312.02520, its tasks and data).

An episode shows k (image, mask) pairs of one category and a query image; the
model generates the query's mask as VQ codes:

    [BOI] image codes [BOI] mask codes [EOC]     (one pair, 2n + 3 tokens)

Records are COCO-style (image, category) pairs whose instances are merged into
one mask. Every record is seen through a square object-centred crop (the paper's
Table 1: object-centred crops help), resized to `image_size`. Training views
jitter the crop's centre and scale and flip it horizontally; image and mask go
through the same view, so they stay aligned. The generated mask is mapped back
to the query's original resolution by undoing the view (flip, resize, crop).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from unicl.masks import (
    MASK_REFINEMENTS,
    check_threshold,
    mask_level,
    refine_map,
    threshold_mask,
)
from unicl.tasks.base import TASKS, Task
from unicl.tasks.prompt import Episode, Segment, Shot, View
from unicl.tasks.scoring import SegmentationScorer
from unicl.tasks.sources import segmentation_pools
from unicl.tasks.transforms import full_square_crop_box, object_centred_crop_box
from unicl.tasks.user import segmentation_record

#: how the query's mask is produced (see SegmentationTask)
MASK_DECODING = ("autoregressive", "parallel")
#: what a demonstration's image shows (see SegmentationTask)
DEMO_IMAGES = ("image", "object")
#: the flat grey that replaces a demonstration's pixels outside its mask (demo_image: object)
OBJECT_BACKGROUND = 128


@TASKS.register("segmentation")
class SegmentationTask(Task):
    """k (image, mask) demonstrations + a query image -> the query's mask.

    Options (config `tasks: {segmentation: {...}}`): the common ones of `Task`,
    and `query_crop`: "object" crops the evaluation query around its ground-truth
    box like the demonstrations (the paper's object-centred setting; note that the
    crop tells the model roughly where the object is), "full" shows the whole
    query image padded to a square (what a user's query without a mask gets).

    How the mask is coded and answered (docs/model.md, "Making the model look at the image"):
    `mask_tokenizer` names the tokenizer of masks ("" = the image tokenizer, the paper's
    shared VQ-GAN; "maskbits" = exact patch bits on the image's token grid);
    `mask_decoding` "autoregressive" generates the query's mask code by code (the paper),
    "parallel" predicts all of its codes in one forward pass from placeholders that carry
    the query image's code at the same cell; `aligned_positions` gives mask token (r, c)
    the position of image token (r, c) in every pair; `mask_readout` "soft" thresholds the
    expected foreground under the predicted code distribution (parallel answers of a
    tokenizer with `decode_soft`), "argmax" decodes the most likely code at each cell;
    `mask_threshold` cuts the answer's grey map (its expected foreground): a foreground
    probability in (0, 1) (0.5 by default), or "expected_iou", the level that maximises
    each map's expected IoU (unicl/masks.py); `mask_refine` "guided" first snaps the map to
    the query image with a colour guided filter whose window has the radius
    `refine_radius` (a share of the query view's side, in the original image's pixels) and
    the ridge `refine_eps` (unicl/masks.py `refine_map`), "none" (the default) does not.

    `full_view_prob`: the share of training views that show the whole image (padded to a
    square, maybe flipped) instead of an object-centred crop. There the object is not the
    crop's centre and other objects compete: what a user's whole-image query looks like.

    `demo_image`: "image" (the default, the paper) shows each demonstration's image as it
    is; "object" shows it with every pixel outside the demonstration's mask set to a flat
    grey, so the demonstration's image codes describe its object alone (the conditioning
    input of one-shot segmentation networks, the support image times its mask). Queries
    always show their whole view.
    """

    name = "segmentation"

    def __init__(
        self,
        query_crop: Literal["object", "full"] = "object",
        mask_tokenizer: str = "",
        mask_decoding: Literal["autoregressive", "parallel"] = "autoregressive",
        aligned_positions: bool = False,
        mask_readout: Literal["soft", "argmax"] = "soft",
        mask_threshold: float | str = 0.5,
        mask_refine: Literal["none", "guided"] = "none",
        refine_radius: float = 0.25,
        refine_eps: float = 1e-3,
        full_view_prob: float = 0.0,
        other_object_prob: float = 0.0,
        other_object_min_visible: float = 0.5,
        demo_image: Literal["image", "object"] = "image",
        **common: Any,
    ) -> None:
        super().__init__(**common)
        if demo_image not in DEMO_IMAGES:
            raise ValueError(
                f"segmentation: demo_image must be one of {DEMO_IMAGES}, got {demo_image!r}"
            )
        self.demo_image = demo_image
        for option, value in (
            ("full_view_prob", full_view_prob),
            ("other_object_prob", other_object_prob),
            ("other_object_min_visible", other_object_min_visible),
        ):
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"segmentation: {option} must be a probability in [0, 1], got {value!r}"
                )
        self.full_view_prob = float(full_view_prob)
        self.other_object_prob = float(other_object_prob)
        self.other_object_min_visible = float(other_object_min_visible)
        #: image file -> the records of that image (every category), filled by load_pools:
        #: where the views centred on another category's object find those objects
        self._image_records: dict[Any, list[Any]] = {}
        if query_crop not in ("object", "full"):
            raise ValueError(
                f"segmentation: query_crop must be 'object' or 'full', got {query_crop!r}"
            )
        self.query_crop = query_crop
        if mask_decoding not in MASK_DECODING:
            raise ValueError(
                f"segmentation: mask_decoding must be one of {MASK_DECODING}, got {mask_decoding!r}"
            )
        if not isinstance(aligned_positions, bool):
            raise ValueError(
                f"segmentation: aligned_positions must be true or false, got {aligned_positions!r}"
            )
        self.mask_tokenizer = mask_tokenizer or self.image_tokenizer
        self.mask_decoding = mask_decoding
        self.aligned = aligned_positions
        if mask_readout not in ("soft", "argmax"):
            raise ValueError(
                f"segmentation: mask_readout must be 'soft' or 'argmax', got {mask_readout!r}"
            )
        self.mask_readout = mask_readout
        self.mask_threshold = check_threshold(mask_threshold, "segmentation")
        if mask_refine not in MASK_REFINEMENTS:
            raise ValueError(
                f"segmentation: mask_refine must be one of {MASK_REFINEMENTS}, got {mask_refine!r}"
            )
        for option, value, high in (
            ("refine_radius", refine_radius, 1.0),
            ("refine_eps", refine_eps, None),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not value > 0
                or (high is not None and value > high)
            ):
                bound = f"in (0, {high}]" if high is not None else "> 0"
                raise ValueError(f"segmentation: {option} must be a number {bound}, got {value!r}")
        self.mask_refine = mask_refine
        self.refine_radius = float(refine_radius)
        self.refine_eps = float(refine_eps)

    def bind(self, vocab: Any) -> None:
        super().bind(vocab)
        for option, name in (
            ("image_tokenizer", self.image_tokenizer),
            ("mask_tokenizer", self.mask_tokenizer),
        ):
            if name not in vocab.tokenizers:
                raise ValueError(
                    f"segmentation: {option} {name!r} is not a configured tokenizer; "
                    f"configured: {', '.join(vocab.tokenizers)}"
                )
        image_codes = codes_per_image(vocab.tokenizers[self.image_tokenizer])
        mask_codes = codes_per_image(vocab.tokenizers[self.mask_tokenizer])
        if (self.mask_decoding == "parallel" or self.aligned) and image_codes != mask_codes:
            raise ValueError(
                f"segmentation: mask_decoding=parallel and aligned_positions need one mask code "
                f"per image code; {self.mask_tokenizer} gives {mask_codes}, "
                f"{self.image_tokenizer} {image_codes} (set the mask tokenizer's grid)"
            )

    def options(self) -> dict[str, Any]:
        out = {**super().options(), "mask_tokenizer": self.mask_tokenizer}
        if self.full_view_prob:  # keeps the cache keys of configs without it
            out["full_view_prob"] = self.full_view_prob
        if self.other_object_prob:
            out["other_object_prob"] = self.other_object_prob
            out["other_object_min_visible"] = self.other_object_min_visible
        if self.demo_image != "image":
            out["demo_image"] = self.demo_image
        return out

    def cache_tokenizer(self, name: str) -> str:
        return self.mask_tokenizer if name == "mask" else self.image_tokenizer

    def parallel_answer(self) -> bool:
        return self.mask_decoding == "parallel"

    def aligned_positions(self) -> bool:
        return self.aligned

    # ---- records ----------------------------------------------------------- #

    def load_pools(self, data_cfg: Any, split: str) -> dict[str, list[Any]]:
        pools = segmentation_pools(data_cfg, split)
        if self.other_object_prob:  # (a second load of a split replaces, never duplicates)
            by_image: dict[Any, list[Any]] = {}
            for records in pools.values():
                for record in records:
                    by_image.setdefault(record.image_path, []).append(record)
            self._image_records.update(by_image)
        return pools

    def skip_reason(self, record: Any) -> str | None:
        x0, y0, x1, y1 = record.box
        if record.area <= 0:
            return "empty mask"
        if x1 - x0 < 1 or y1 - y0 < 1:
            return "degenerate box"
        return None

    def record_id(self, record: Any) -> str:
        return f"{record.image_id}:{record.category_id}"

    # ---- views and pairs ----------------------------------------------------- #

    def eval_view(self, record: Any, query: bool = False) -> View:
        if query and self.query_crop == "full":
            return self.query_view(record)
        return super().eval_view(record, query)

    def train_view(self, record: Any, rng: np.random.Generator) -> View:
        """The object-centred view of Task.train_view or, with `full_view_prob`, the whole
        image (maybe flipped): there other objects compete, and the demonstrations say which."""
        if self.full_view_prob and rng.random() < self.full_view_prob:
            flip = bool(rng.random() < self.flip_prob)
            return dataclasses.replace(self.query_view(record), flip=flip)
        if self.other_object_prob and rng.random() < self.other_object_prob:
            view = self.other_object_view(record, rng)
            if view is not None:
                return view
        return super().train_view(record, rng)

    def other_object_view(self, record: Any, rng: np.random.Generator) -> View | None:
        """A jittered crop centred on another category's object of `record`'s image that keeps
        at least `other_object_min_visible` of `record`'s mask; None when no object does."""
        others = [
            r
            for r in self._image_records.get(record.image_path, ())
            if r.category != record.category
        ]
        if not others:
            return None
        mask = record.load_mask()
        total = mask.sum()
        for k in rng.permutation(len(others)):
            x0, y0, x1, y1 = crop = object_centred_crop_box(
                others[k].box,
                record.height,
                record.width,
                rng=rng,
                context=self.context,
                jitter=self.jitter,
            )
            inside = mask[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)].sum()
            if total and inside >= self.other_object_min_visible * total:
                return View(crop, bool(rng.random() < self.flip_prob), self.image_size)
        return None

    def view_arrays(self, shot: Shot) -> tuple[np.ndarray, np.ndarray]:
        """The view's (S, S, 3) uint8 image and (S, S) bool mask."""
        return shot.view.apply(shot.record.load_image()), shot.view.apply(shot.record.load_mask())

    def cache_names(self) -> tuple[str, ...]:
        names = super().cache_names()  # the image and the mask
        return (*names, "object") if self.demo_image == "object" else names

    def cache_arrays(self, shot: Shot) -> dict[str, tuple[str, np.ndarray]]:
        image, mask = self.view_arrays(shot)
        out = {"image": ("", image), "mask": ("mask", mask)}
        if self.demo_image == "object":
            out["object"] = ("", object_image(image, mask))
        return out

    def pair(self, shot: Shot, query: bool = False) -> list[Segment]:
        codes = shot.codes
        # a demonstration shows its object alone (demo_image: object); a user's query has
        # no mask, and every query shows its whole view
        demo_object = self.demo_image == "object" and not query
        image_ids = codes.get("object" if demo_object else "image")
        mask_ids = codes.get("mask")
        mask = None
        if mask_ids is None and getattr(shot.record, "answered", True):
            mask = shot.view.apply(shot.record.load_mask())
        image = None
        if image_ids is None:
            image = shot.view.apply(shot.record.load_image())
            if demo_object:  # the mask seen through the view once, for both segments
                shown = mask if mask is not None else shot.view.apply(shot.record.load_mask())
                image = object_image(image, shown)
        # a user's query has no mask: its answer segment is unanswered (Segment.answered)
        return [
            Segment(self.image_tokenizer, image, "input", ids=image_ids),
            Segment(self.mask_tokenizer, mask, "output", kind="mask", ids=mask_ids),
        ]

    # ---- user prompts and answers ---------------------------------------------- #

    demo_fields = ("image", "mask")
    query_fields = ("image",)

    def user_record(self, item: Any, image_id: int, category: str) -> Any:
        return segmentation_record(item, image_id, category)

    def query_view(self, record: Any) -> View:
        """A user's query has no mask to centre on: the whole image, padded to a square."""
        return View(full_square_crop_box(record.height, record.width), False, self.image_size)

    def postprocess(self, episode: Episode, generated: Sequence[int], vocab: Any) -> MaskAnswer:
        """Generated global ids (mask codes, then [EOC]) -> the mask at the query's size."""
        tok = vocab.tokenizers[self.mask_tokenizer]
        span = vocab.ranges[self.mask_tokenizer]
        codes = [int(i) for i in generated if int(i) in span]
        n = codes_per_image(tok)
        if len(codes) != n:
            raise ValueError(
                f"segmentation: expected {n} mask codes from the generator, got {len(codes)}"
            )
        local = np.asarray(vocab.to_local(self.mask_tokenizer, codes), np.int64)  # (n,)
        return self._mask_answer(episode, _grey(tok, local))

    def postprocess_distribution(self, episode: Episode, probs: Any, vocab: Any) -> MaskAnswer:
        """(n, K) code probabilities per cell -> the mask (`mask_readout`, docs/model.md).

        "soft" thresholds the expected foreground of each cell under the distribution (the
        tokenizer's `decode_soft`); "argmax" decodes the most likely code of each cell.
        """
        tok = vocab.tokenizers[self.mask_tokenizer]
        if self.mask_readout == "soft" and hasattr(tok, "decode_soft"):
            return self._mask_answer(episode, 255.0 * tok.decode_soft(probs))
        return self._mask_answer(episode, _grey(tok, probs.argmax(-1)))

    def _mask_answer(self, episode: Episode, grey: Any) -> MaskAnswer:
        """A (s, s) grey map in the query's view -> the answer at the query's resolution."""
        height, width = episode.meta["query_size"]
        grey = np.asarray(grey, np.float32)
        full = episode.meta["query_view"].unapply_map(grey, height, width)  # (H, W)
        if self.mask_refine == "guided":
            full = self.refine(episode, full)
        return self.cut(full)

    def refine(
        self,
        episode: Episode,
        grey: np.ndarray,
        radius: float | None = None,
        eps: float | None = None,
    ) -> np.ndarray:
        """The query's grey map (H, W) snapped to its image (`mask_refine: guided`).

        `radius` (a share of the query view's side) and `eps` default to the task's
        `refine_radius` and `refine_eps`; tools/sweep_mask_refine.py tries others.
        """
        view = episode.meta["query_view"]
        side = view.crop[2] - view.crop[0]  # the view's side in original pixels
        share = self.refine_radius if radius is None else radius
        pixels = max(1, round(share * side))
        image = episode.meta["query_record"].load_image()
        return refine_map(grey, image, pixels, self.refine_eps if eps is None else eps)

    def cut(self, grey: np.ndarray) -> MaskAnswer:
        """A grey map at the query's resolution -> the answer, cut at `mask_threshold`."""
        level = mask_level(grey, self.mask_threshold)
        return MaskAnswer(mask=threshold_mask(grey, level), mask_image=grey, threshold=level)

    ensembles = True

    def combine(self, answers: Sequence[MaskAnswer]) -> MaskAnswer:
        """Ensembling: the mean of the grey maps, thresholded once."""
        if len(answers) == 1:
            return answers[0]
        return self.cut(np.mean([a.mask_image for a in answers], axis=0).astype(np.float32))

    def scorer(self, baselines: bool = True) -> Any:
        return SegmentationScorer(baselines)


def _grey(tokenizer: Any, codes: Any) -> np.ndarray:
    """Mask codes -> the grey map (0-255) they decode to, in the query's view.

    A tokenizer with `decode_soft` (mask bits) gives its exact map; another (the VQ-GAN)
    decodes an image whose mean over its colour channels is the map.
    """
    if hasattr(tokenizer, "decode_soft"):
        return 255.0 * tokenizer.decode_soft(tokenizer.one_hot(codes))  # (s, s)
    image = np.asarray(tokenizer.decode(codes), np.float32)  # (s, s, 3) or (s, s)
    return image.mean(axis=-1) if image.ndim == 3 else image


@dataclasses.dataclass
class MaskAnswer:
    """A segmentation answer at the query's resolution: `mask == (mask_image > threshold)`."""

    mask: np.ndarray  # (H, W) bool
    mask_image: np.ndarray  # (H, W) float32 grey level 0-255 (the expected foreground x 255)
    threshold: float  # the grey level the map was cut at (`mask_threshold`)


def codes_per_image(tokenizer: Any) -> int:
    """Number of codes the image tokenizer gives one image."""
    n = getattr(tokenizer, "codes_per_image", None)
    if n is not None:
        return int(n)
    return len(tokenizer.encode(np.zeros((64, 64, 3), np.uint8)))


def object_image(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(S, S, 3) image, (S, S) mask -> the image with the pixels outside the mask grey."""
    out = np.full_like(image, OBJECT_BACKGROUND)
    keep = np.asarray(mask, bool)
    out[keep] = image[keep]
    return out
