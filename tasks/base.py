"""The task plugin contract, the `TASKS` registry and the episode data structures.

A task turns dataset records into in-context *episodes* (k demonstrations and
one query of the same category, as in the class-aware in-context tasks of
arXiv 2312.02520) and turns generated payloads back into answers. An episode is
a list of *pairs*; each pair is an ordered list of `Segment`s (a modality, its
raw payload, and whether it is model input or the output the model must
produce). The sequence packer (unicl/sequence.py) turns an episode into tokens;
it never needs to know which task made it.

Every record is seen through a `View`: a square crop box in the record's original
pixels, an optional horizontal flip and the side length the crop is resized to.
Training draws random views (augmentation); evaluation uses fixed ones, stored
in the evaluation episode files so that results are reproducible.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
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
    #: (unicl/sequence.py, "Parallel answers")
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
        from unicl.tasks.transforms import crop_and_resize

        array = np.asarray(array)
        mode = "nearest" if array.dtype == bool else "bilinear"
        out = crop_and_resize(array, self.crop, self.size, interpolation=mode)
        return np.ascontiguousarray(out[:, ::-1]) if self.flip else out

    def unapply_mask(self, mask: np.ndarray, height: int, width: int) -> np.ndarray:
        """A (s, s) mask in view coordinates -> (height, width) bool in the original image."""
        from unicl.tasks.transforms import uncrop_mask

        mask = np.asarray(mask, dtype=bool)
        if self.flip:
            mask = mask[:, ::-1]
        return uncrop_mask(np.ascontiguousarray(mask), self.crop, height, width)

    def box_to_view(self, box: Sequence[float]) -> tuple[float, float, float, float]:
        """A box in original pixels -> normalised [0, 1] coordinates of the view (clipped)."""
        from unicl.tasks.transforms import box_to_crop

        x0, y0, x1, y1 = (v / self.size for v in box_to_crop(box, self.crop, self.size))
        if self.flip:
            x0, x1 = 1.0 - x1, 1.0 - x0
        return (x0, y0, x1, y1)

    def box_from_view(self, box: Sequence[float]) -> tuple[float, float, float, float]:
        """Normalised [0, 1] view coordinates -> a box in original pixels."""
        from unicl.tasks.transforms import box_from_crop

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
      pair (always on for 0-shot episodes, where it is the only task hint);
    - `image_size`: side of the square crops given to the image tokenizer;
    - `image_tokenizer`: the tokenizer of images (and masks);
    - `input_image_weight`: loss weight of input image tokens (0 = inputs carry no
      loss; the paper's single-task captioning uses 0.5);
    - `context_min`, `context_max`: crop side / object box's longer side; training
      draws it uniformly (scale jitter), evaluation takes the middle;
    - `jitter`: training moves the crop centre by up to this fraction of its side;
    - `flip_prob`: probability of a horizontal flip in training;
    - `cache_views`: augmented views per training record whose tokens are computed
      once and cached on disk (unicl/data.py); 0 = tokenize every step;
    - `cache_dir`: where the token cache lives ("" = unicl's cache directory).
    """

    name: str = ""

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
    ) -> None:
        if shots < 0:
            raise ValueError(f"{self.name}: shots must be >= 0, got {shots}")
        if image_size < 8:
            raise ValueError(f"{self.name}: image_size must be >= 8 pixels, got {image_size}")
        if input_image_weight < 0:
            raise ValueError(f"{self.name}: input_image_weight must be >= 0")
        if not 1.0 <= context_min <= context_max:
            raise ValueError(
                f"{self.name}: need 1 <= context_min <= context_max, "
                f"got {context_min}, {context_max}"
            )
        if not 0.0 <= jitter < 0.5 or not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"{self.name}: jitter must be in [0, 0.5), flip_prob in [0, 1]")
        self.shots = shots
        self.category_text = category_text
        self.image_size = image_size
        self.image_tokenizer = image_tokenizer
        self.input_image_weight = float(input_image_weight)
        self.context = (float(context_min), float(context_max))
        self.jitter = float(jitter)
        self.flip_prob = float(flip_prob)
        if cache_views < 0:
            raise ValueError(f"{self.name}: cache_views must be >= 0, got {cache_views}")
        self.cache_views = cache_views
        self.cache_dir = cache_dir
        self.last_pool_stats = PoolStats()
        self.vocab: Any = None

    def bind(self, vocab: Any) -> None:
        """Know the run's vocabulary (tasks may use it to check token budgets)."""
        self.vocab = vocab

    def options(self) -> dict[str, Any]:
        """What changes the views and their tokens (part of the token cache's key)."""
        return {
            "image_size": self.image_size,
            "image_tokenizer": self.image_tokenizer,
            "context": list(self.context),
            "jitter": self.jitter,
            "flip_prob": self.flip_prob,
        }

    def cache_arrays(self, shot: Shot) -> dict[str, tuple[str, np.ndarray]]:
        """Arrays of a view to pre-tokenize: name -> (tokenizer kind, array).

        The names are those `pair` looks up in `Shot.codes`; the default has none
        (nothing cached).
        """
        return {}

    def cache_tokenizer(self, name: str) -> str:
        """The tokenizer that encodes cached array `name` (default: the image tokenizer)."""
        return self.image_tokenizer

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

    def eval_view(self, record: Any, query: bool = False) -> View:
        """The deterministic view used in evaluation: an object-centred crop of `record.box`."""
        from unicl.tasks.transforms import object_centred_crop_box

        crop = object_centred_crop_box(
            record.box, record.height, record.width, context=self.context
        )
        return View(crop, False, self.image_size)

    def train_view(self, record: Any, rng: np.random.Generator) -> View:
        """A random view: object-centred crop with scale and centre jitter, maybe flipped."""
        from unicl.tasks.transforms import object_centred_crop_box

        crop = object_centred_crop_box(
            record.box,
            record.height,
            record.width,
            rng=rng,
            context=self.context,
            jitter=self.jitter,
        )
        return View(crop, bool(rng.random() < self.flip_prob), self.image_size)

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

    def augment(self, episode: Episode, rng: np.random.Generator) -> Episode:
        """A training episode, possibly changed (training streams call this; default: as is)."""
        return episode

    def parallel_answer(self) -> bool:
        """Whether the query's grid answer is predicted in one pass (see Episode.parallel)."""
        return False

    def aligned_positions(self) -> bool:
        """Whether output grid tokens share their input image's positions (Episode)."""
        return False

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
            parallel=self.parallel_answer(),
            aligned_positions=self.aligned_positions(),
        )

    def episodes(
        self,
        pools: Mapping[str, Sequence[Any]],
        rng: np.random.Generator,
        shots: int | None = None,
        train: bool = True,
    ) -> Iterator[Episode]:
        """Episodes over `pools`: every record once as the query, in random order.

        Demonstrations are drawn from the query's category (other images); views are
        random training views, or the fixed evaluation views with `train=False`.
        Training uses unicl/data.py's TaskStream (cached tokens, resumable), and
        evaluation the fixed episode files; this is the plain form of both.
        """
        k = self.shots if shots is None else shots
        items = [(c, r) for c, pool in sorted(pools.items()) for r in pool]
        for index in rng.permutation(len(items)):
            category, query = items[int(index)]
            demos = self.sample_demos(pools[category], query, k, rng)
            if train:
                shots_ = [Shot(r, self.train_view(r, rng)) for r in (query, *demos)]
            else:
                shots_ = [Shot(query, self.eval_view(query, query=True))]
                shots_ += [Shot(r, self.eval_view(r)) for r in demos]
            yield self.episode(shots_[0], shots_[1:], category)

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
