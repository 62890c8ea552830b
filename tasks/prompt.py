"""The prompt data model: segments, pairs, episodes and the views records are seen through.

A task (tasks/base.py) lays a record out as one in-context *pair*: an ordered list of
`Segment`s (a modality, its raw payload, and whether it is model input or the output the
model must produce). An `Episode` is k demonstration pairs and one query pair of one
category (the class-aware in-context tasks of arXiv 2312.02520); the sequence packer
(unicl/packer.py) turns it into tokens without knowing which task made it.

Every record is seen through a `View`: a square crop box in the record's original
pixels, an optional horizontal flip and the side length the crop is resized to.
Training draws random views (augmentation); evaluation uses fixed ones, stored in the
evaluation episode files so that results are reproducible. A `Shot` is a record seen
through a view.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from PIL import Image

from unicl.tasks.transforms import box_from_crop, box_to_crop, crop_and_resize, uncrop_mask

Role = Literal["input", "output"]


@dataclasses.dataclass
class Segment:
    """One run of tokens of one modality in a prompt.

    `modality` is the name of the tokenizer that encodes `payload` ("gpt2",
    "vqgan", "bins", or a plugin's name), or "special" when `payload` is the name of
    a special token/tag. `role` says whether the tokens are given to the model
    ("input") or must be produced by it ("output", the tokens that carry loss and
    that generation fills in).

    `kind` selects a payload variant of the tokenizer: the packer calls
    `tokenizer.encode_<kind>(payload)` instead of `encode` (e.g. kind "mask" for a
    bool mask given to the VQ-GAN, which renders it as a 0/255 image). `ids`, when
    set, are the tokenizer's *local* ids of the payload, already computed (the token
    cache); the packer then uses them and never runs the tokenizer. An output segment
    with neither payload nor ids is unanswered (`answered`).
    """

    modality: str
    payload: Any
    role: Role = "input"
    kind: str = ""
    ids: Any = None

    def __post_init__(self) -> None:
        if self.role not in ("input", "output"):
            raise ValueError(f"Segment.role must be 'input' or 'output', got {self.role!r}")

    @property
    def answered(self) -> bool:
        """False for the answer of a user's query: an output without payload or ids, which
        the packer leaves for the model to produce (unicl/packer.py)."""
        return self.payload is not None or self.ids is not None or self.modality == "special"


@dataclasses.dataclass
class Episode:
    """k demonstration pairs followed by one query pair, all of one category.

    `pairs[-1]` is the query; `pairs[:-1]` are the demonstrations (possibly none).
    `prefix` holds segments that come before the first pair (e.g. the category
    name as text in the 0-shot setting). `meta` carries what post-processing needs
    (record ids, crop boxes, original sizes) and is never tokenized.

    `pad_pairs`: pad every pair with [PAD] after its [EOC] to the length of an
    image pair (`[BOI] n codes [BOI] n codes [EOC]`, n = the pair's first image's
    token count), as the paper pads captions to the image length.
    `generate_from`: index into the query pair of the first segment that
    generation produces (everything before it is the prompt); None = the query's
    first output segment. `parallel`, `aligned_positions`: see the fields.
    """

    task: str
    category: str
    pairs: list[list[Segment]]
    prefix: list[Segment] = dataclasses.field(default_factory=list)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    pad_pairs: bool = False
    generate_from: int | None = None
    #: the query's output grid segment (a mask) is answered in one forward pass: the packer
    #: puts placeholder tokens in its place and the model predicts every code at once
    #: (unicl/packer.py, "Parallel answers")
    parallel: bool = False
    #: the tokens of an output grid segment (a mask) take the positions of the pair's input
    #: image, so mask token (r, c) and image token (r, c) share one position embedding
    aligned_positions: bool = False

    @property
    def demos(self) -> list[list[Segment]]:
        return self.pairs[:-1]

    @property
    def query(self) -> list[Segment]:
        return self.pairs[-1]

    @property
    def shots(self) -> int:
        return len(self.pairs) - 1

    def generation_start(self) -> int:
        """Index of the first generated segment of the query pair."""
        if self.generate_from is not None:
            if not 0 <= self.generate_from < len(self.query):
                raise ValueError(
                    f"Episode.generate_from={self.generate_from} is outside the query pair "
                    f"({len(self.query)} segments)"
                )
            return self.generate_from
        for index, segment in enumerate(self.query):
            if segment.role == "output":
                return index
        raise ValueError("the query pair has no output segment: nothing to generate")


@dataclasses.dataclass(frozen=True)
class View:
    """How a record is shown to the model: crop, flip, resize.

    `crop` is a square box (x0, y0, x1, y1) in the record's original integer pixels
    (it may extend past the image border; the outside is padded with 0); the crop is
    resized to `size` x `size` and then flipped horizontally when `flip`.
    Geometry is tasks/transforms.py's; this class applies it and undoes it.
    """

    crop: tuple[int, int, int, int]
    flip: bool = False
    size: int = 256

    def __post_init__(self) -> None:
        x0, y0, x1, y1 = self.crop
        if x1 - x0 != y1 - y0 or x1 <= x0:
            raise ValueError(f"View.crop must be a non-empty square, got {self.crop}")
        if self.size < 1:
            raise ValueError(f"View.size must be >= 1, got {self.size}")

    def apply(self, array: np.ndarray) -> np.ndarray:
        """(H, W[, C]) image or bool mask -> (size, size[, C]) as this view shows it."""
        array = np.asarray(array)
        mode = "nearest" if array.dtype == bool else "bilinear"
        out = crop_and_resize(array, self.crop, self.size, interpolation=mode)
        return np.ascontiguousarray(out[:, ::-1]) if self.flip else out

    def unapply_mask(self, mask: np.ndarray, height: int, width: int) -> np.ndarray:
        """A (s, s) mask in view coordinates -> (height, width) bool in the original image."""
        mask = np.asarray(mask, dtype=bool)
        if self.flip:
            mask = mask[:, ::-1]
        return uncrop_mask(np.ascontiguousarray(mask), self.crop, height, width)

    def unapply_map(self, values: np.ndarray, height: int, width: int) -> np.ndarray:
        """A (s, s) float map in view coordinates -> (height, width) float32 on the original image.

        The soft counterpart of `unapply_mask` (bilinear instead of nearest), so that maps
        of several prompts can be averaged before they are thresholded; outside the crop the
        map is 0 (background).
        """
        values = np.asarray(values, np.float32)
        if self.flip:
            values = values[:, ::-1]
        x0, y0, x1, y1 = (int(v) for v in self.crop)
        side = Image.fromarray(np.ascontiguousarray(values), mode="F").resize(
            (x1 - x0, y1 - y0), Image.Resampling.BILINEAR
        )
        full = np.asarray(side, np.float32)  # (side, side)
        out = np.zeros((height, width), np.float32)
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if ix1 > ix0 and iy1 > iy0:
            out[iy0:iy1, ix0:ix1] = full[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
        return out

    def box_to_view(self, box: Sequence[float]) -> tuple[float, float, float, float]:
        """A box in original pixels -> normalised [0, 1] coordinates of the view (clipped)."""
        x0, y0, x1, y1 = (v / self.size for v in box_to_crop(box, self.crop, self.size))
        if self.flip:
            x0, x1 = 1.0 - x1, 1.0 - x0
        return (x0, y0, x1, y1)

    def box_from_view(self, box: Sequence[float]) -> tuple[float, float, float, float]:
        """Normalised [0, 1] view coordinates -> a box in original pixels."""
        x0, y0, x1, y1 = (float(v) for v in box)
        if self.flip:
            x0, x1 = 1.0 - x1, 1.0 - x0
        return box_from_crop([v * self.size for v in (x0, y0, x1, y1)], self.crop, self.size)

    def to_json(self) -> dict[str, Any]:
        return {"crop": [int(c) for c in self.crop], "flip": self.flip, "size": self.size}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> View:
        crop = tuple(int(c) for c in data["crop"])
        if len(crop) != 4:
            raise ValueError(f"View.crop must have 4 numbers, got {data['crop']!r}")
        return cls(crop, bool(data.get("flip", False)), int(data["size"]))  # type: ignore[arg-type]


@dataclasses.dataclass
class Shot:
    """A record seen through a view, optionally with its cached token ids.

    `codes` maps a segment name of the task ("image", "mask", ...) to local token
    ids already computed for exactly this view (see unicl/token_cache.py).
    """

    record: Any
    view: View
    codes: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
