"""The task plugin contract, the `TASKS` registry and the episode data structures.

A task turns dataset records into in-context *episodes* (k demonstrations and
one query of the same category, PAPER.md "Tasks") and turns generated payloads
back into answers. An episode is a list of *pairs*; each pair is an ordered list
of `Segment`s (a modality, its raw payload, and whether it is model input or the
output the model must produce). The sequence packer (unicl/sequence.py) turns an
episode into tokens; it never needs to know which task made it.

Every record is seen through a `View`: a square crop box in the record's original
pixels, an optional horizontal flip and the side length the crop is resized to.
Training draws random views (augmentation); evaluation uses fixed ones, stored
in the evaluation episode files so that results are reproducible.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from unicl.registry import Registry

Role = Literal["input", "output"]

log = logging.getLogger(__name__)

TASKS: Registry[type] = Registry(
    "task",
    contract="""
    A task plugin is a subclass of unicl.tasks.Task registered with
    @TASKS.register("name"). It takes its options as keyword arguments (configs pass
    them by name under `tasks: {name: {...}}`), reads its per-category record pools
    (`pools`), chooses views of records (`train_view`, `eval_view`), lays a record
    out as one in-context pair of Segments (`pair`), and post-processes generated
    tokens into answers (`postprocess`). The base class assembles episodes. See
    docs/plugins.md.
    """,
)


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
    cache); the packer then uses them and never runs the tokenizer.
    """

    modality: str
    payload: Any
    role: Role = "input"
    kind: str = ""
    ids: Any = None

    def __post_init__(self) -> None:
        if self.role not in ("input", "output"):
            raise ValueError(f"Segment.role must be 'input' or 'output', got {self.role!r}")


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
    first output segment.
    """

    task: str
    category: str
    pairs: list[list[Segment]]
    prefix: list[Segment] = dataclasses.field(default_factory=list)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    pad_pairs: bool = False
    generate_from: int | None = None

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

    `crop` is a square box (x0, y0, x1, y1) in the record's original pixels (it may
    extend past the image border; the outside is padded); the crop is flipped
    horizontally when `flip` and resized to `size` x `size`.
    """

    crop: tuple[float, float, float, float]
    flip: bool = False
    size: int = 256

    def to_json(self) -> dict[str, Any]:
        return {
            "crop": [round(float(c), 3) for c in self.crop],
            "flip": self.flip,
            "size": self.size,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> View:
        crop = tuple(float(c) for c in data["crop"])
        if len(crop) != 4:
            raise ValueError(f"View.crop must have 4 numbers, got {data['crop']!r}")
        return cls(crop=crop, flip=bool(data.get("flip", False)), size=int(data["size"]))  # type: ignore[arg-type]


@dataclasses.dataclass
class Shot:
    """A record seen through a view, optionally with its cached token ids.

    `codes` maps a segment name of the task ("image", "mask", ...) to local token
    ids already computed for exactly this view (see unicl/data.py).
    """

    record: Any
    view: View
    codes: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


class PoolStats(dict):
    """Counts of records skipped while building pools, by reason (logged, never silent)."""

    def add(self, reason: str, n: int = 1) -> None:
        self[reason] = self.get(reason, 0) + n


class Task(abc.ABC):
    """Base class of task plugins (see `TASKS` for the contract).

    Subclasses set `name`, implement the abstract methods, and take their options
    as keyword arguments. Common options handled here:

    - `shots`: demonstrations per training episode (0 = query only);
    - `category_text`: put `[BOT] Category: <c_st> name <c_ed>` before the first
      pair (forced on for 0-shot episodes, where it is the only task hint);
    - `image_size`: side of the square crops given to the image tokenizer;
    - `input_image_weight`: loss weight of input image tokens (0 = inputs carry no
      loss; the paper's single-task captioning uses 0.5).
    """

    name: str = ""

    def __init__(
        self,
        shots: int = 3,
        category_text: bool = False,
        image_size: int = 256,
        input_image_weight: float = 0.0,
    ) -> None:
        if shots < 0:
            raise ValueError(f"{self.name}: shots must be >= 0, got {shots}")
        if image_size < 8:
            raise ValueError(f"{self.name}: image_size must be >= 8 pixels, got {image_size}")
        if input_image_weight < 0:
            raise ValueError(f"{self.name}: input_image_weight must be >= 0")
        self.shots = shots
        self.category_text = category_text
        self.image_size = image_size
        self.input_image_weight = float(input_image_weight)

    # ---- records ---------------------------------------------------------- #

    @abc.abstractmethod
    def load_pools(self, data_cfg: Any, split: str) -> dict[str, list[Any]]:
        """Raw per-category record pools of a split (from tasks/data.py)."""

    @abc.abstractmethod
    def skip_reason(self, record: Any) -> str | None:
        """Why a record cannot be used (empty mask, degenerate box), or None."""

    @abc.abstractmethod
    def record_id(self, record: Any) -> str:
        """A stable string id of a record (used in episode files and the cache)."""

    @staticmethod
    def image_key(record: Any) -> Any:
        """Demonstrations never come from the query's image: this is its identity."""
        return record.image_id

    def pools(self, data_cfg: Any, split: str, min_shots: int | None = None) -> dict[str, list]:
        """Usable per-category pools: bad records and too-small categories are dropped.

        A category needs records from at least `min_shots + 1` distinct images
        (default: this task's `shots`) so that every query has enough demos from
        other images. Every drop is counted and logged.
        """
        need = self.shots if min_shots is None else min_shots
        stats = PoolStats()
        out: dict[str, list] = {}
        for category, records in sorted(self.load_pools(data_cfg, split).items()):
            kept = []
            for record in records:
                reason = self.skip_reason(record)
                if reason is None:
                    kept.append(record)
                else:
                    stats.add(reason)
            images = {self.image_key(r) for r in kept}
            if len(images) < need + 1:
                stats.add(f"records of categories with < {need + 1} images", len(kept))
                stats.add("categories with too few images")
                continue
            out[category] = kept
        self.last_pool_stats = stats
        if stats:
            log.warning("%s/%s: skipped %s", self.name, split, dict(stats))
        if not out:
            raise ValueError(
                f"{self.name}/{split}: no category has records from {need + 1} distinct images "
                f"(needed for {need} demonstrations + a query); skipped: {dict(stats)}"
            )
        return out

    # ---- views and pairs --------------------------------------------------- #

    @abc.abstractmethod
    def eval_view(self, record: Any) -> View:
        """The deterministic view of a record used in evaluation."""

    @abc.abstractmethod
    def train_view(self, record: Any, rng: np.random.Generator) -> View:
        """A random augmented view of a record (crop jitter, scale jitter, flip)."""

    @abc.abstractmethod
    def pair(self, shot: Shot, query: bool = False) -> list[Segment]:
        """The segments of one in-context pair for a record seen through a view."""

    @abc.abstractmethod
    def postprocess(self, episode: Episode, generated: Sequence[int], vocab: Any) -> Any:
        """Generated global ids of the query (from the generation start) -> an answer."""

    def pad_pairs(self) -> bool:
        """Whether pairs are padded to the image-pair length (see Episode.pad_pairs)."""
        return False

    def generate_from(self) -> int | None:
        """Index of the first generated query segment (None: first output segment)."""
        return None

    # ---- episodes ----------------------------------------------------------- #

    def category_prefix(self, category: str) -> list[Segment]:
        """`Category: <c_st> name <c_ed>` (the packer opens it with [BOT])."""
        return [
            Segment("gpt2", "Category:"),
            Segment("special", "<c_st>"),
            Segment("gpt2", f" {category}"),
            Segment("special", "<c_ed>"),
        ]

    def episode(
        self,
        query: Shot,
        demos: Sequence[Shot],
        category: str,
        category_text: bool | None = None,
    ) -> Episode:
        """Lay out demos + query of one category as an Episode."""
        query_image = self.image_key(query.record)
        for demo in demos:
            if self.image_key(demo.record) == query_image:
                raise ValueError(
                    f"{self.name}: demonstration {self.record_id(demo.record)} comes from the "
                    f"query's image {query_image!r}; demos must come from other images"
                )
        with_text = self.category_text if category_text is None else category_text
        prefix = self.category_prefix(category) if (with_text or not demos) else []
        pairs = [self.pair(d) for d in demos] + [self.pair(query, query=True)]
        meta = {
            "query_id": self.record_id(query.record),
            "demo_ids": [self.record_id(d.record) for d in demos],
            "query_view": query.view,
            "query_size": (int(query.record.height), int(query.record.width)),
            "query_record": query.record,
        }
        return Episode(
            task=self.name,
            category=category,
            pairs=pairs,
            prefix=prefix,
            meta=meta,
            pad_pairs=self.pad_pairs(),
            generate_from=self.generate_from(),
        )

    def sample_demos(
        self,
        pool: Sequence[Any],
        query: Any,
        k: int,
        rng: np.random.Generator,
    ) -> list[Any]:
        """k records of `pool` from k distinct images other than the query's."""
        query_image = self.image_key(query)
        by_image: dict[Any, list[Any]] = {}
        for record in pool:
            key = self.image_key(record)
            if key != query_image:
                by_image.setdefault(key, []).append(record)
        if len(by_image) < k:
            raise ValueError(
                f"{self.name}: category has {len(by_image)} other images for query "
                f"{self.record_id(query)}, {k} demonstrations needed"
            )
        images = list(by_image)
        chosen = rng.choice(len(images), size=k, replace=False) if k else []
        out = []
        for index in chosen:
            group = by_image[images[int(index)]]
            out.append(group[int(rng.integers(len(group)))])
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(shots={self.shots}, category_text={self.category_text}, "
            f"image_size={self.image_size})"
        )
