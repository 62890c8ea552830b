"""Class-aware in-context segmentation (PAPER.md "Tasks", "Data").

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

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from unicl.tasks.base import TASKS, Episode, Segment, Shot, Task, View


@TASKS.register("segmentation")
class SegmentationTask(Task):
    """k (image, mask) demonstrations + a query image -> the query's mask.

    Options (config `tasks: {segmentation: {...}}`): the common ones of `Task`,
    and `query_crop`: "object" crops the evaluation query around its ground-truth
    box like the demonstrations (the paper's object-centred setting; note that the
    crop tells the model roughly where the object is), "full" shows the whole
    query image padded to a square (what a user's query without a mask gets).
    """

    name = "segmentation"

    def __init__(
        self,
        shots: int = 3,
        category_text: bool = False,
        image_size: int = 256,
        image_tokenizer: str = "vqgan",
        input_image_weight: float = 0.0,
        context_min: float = 1.5,
        context_max: float = 2.5,
        jitter: float = 0.1,
        flip_prob: float = 0.5,
        cache_views: int = 8,
        cache_dir: str = "",
        query_crop: Literal["object", "full"] = "object",
    ) -> None:
        super().__init__(
            shots,
            category_text,
            image_size,
            image_tokenizer,
            input_image_weight,
            context_min,
            context_max,
            jitter,
            flip_prob,
            cache_views,
            cache_dir,
        )
        if query_crop not in ("object", "full"):
            raise ValueError(
                f"segmentation: query_crop must be 'object' or 'full', got {query_crop!r}"
            )
        self.query_crop = query_crop

    # ---- records ----------------------------------------------------------- #

    def load_pools(self, data_cfg: Any, split: str) -> dict[str, list[Any]]:
        from unicl.tasks.data import segmentation_pools

        return segmentation_pools(data_cfg, split)

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
            from unicl.tasks.transforms import full_square_crop_box

            return View(full_square_crop_box(record.height, record.width), False, self.image_size)
        return super().eval_view(record, query)

    def view_arrays(self, shot: Shot) -> tuple[np.ndarray, np.ndarray]:
        """The view's (S, S, 3) uint8 image and (S, S) bool mask."""
        return shot.view.apply(shot.record.load_image()), shot.view.apply(shot.record.load_mask())

    def cache_arrays(self, shot: Shot) -> dict[str, tuple[str, np.ndarray]]:
        image, mask = self.view_arrays(shot)
        return {"image": ("", image), "mask": ("mask", mask)}

    def pair(self, shot: Shot, query: bool = False) -> list[Segment]:
        codes = shot.codes
        if "image" in codes and "mask" in codes:
            image = mask = None  # cached codes: the pixels are never loaded
        else:
            image, mask = self.view_arrays(shot)
        return [
            Segment(self.image_tokenizer, image, "input", ids=codes.get("image")),
            Segment(self.image_tokenizer, mask, "output", kind="mask", ids=codes.get("mask")),
        ]

    # ---- answers ------------------------------------------------------------- #

    def postprocess(self, episode: Episode, generated: Sequence[int], vocab: Any) -> np.ndarray:
        """Generated global ids (mask codes, then [EOC]) -> (H, W) bool at the query's size."""
        tok = vocab.tokenizers[self.image_tokenizer]
        span = vocab.ranges[self.image_tokenizer]
        codes = [int(i) for i in generated if int(i) in span]
        n = codes_per_image(tok)
        if len(codes) != n:
            raise ValueError(
                f"segmentation: expected {n} mask codes from the generator, got {len(codes)}"
            )
        mask = np.asarray(tok.decode_mask(vocab.to_local(self.image_tokenizer, codes)), bool)
        height, width = episode.meta["query_size"]
        return episode.meta["query_view"].unapply_mask(mask, height, width)  # (H, W)


def codes_per_image(tokenizer: Any) -> int:
    """Number of codes the image tokenizer gives one image."""
    n = getattr(tokenizer, "codes_per_image", None)
    if n is not None:
        return int(n)
    return len(tokenizer.encode(np.zeros((64, 64, 3), np.uint8)))
