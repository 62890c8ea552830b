"""The task plugin contract: the `TASKS` registry and the `Task` base class.

A task turns dataset records into in-context *episodes* (k demonstrations and
one query of the same category, as in the class-aware in-context tasks of
arXiv 2312.02520), turns a user's images into the same kind of prompt, turns
generated tokens back into answers and says how answers are scored. The prompt
data model (`Segment`, `Episode`, `View`, `Shot`) is in tasks/prompt.py.
"""

from __future__ import annotations

import abc
import logging
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from unicl.registry import Registry
from unicl.tasks.prompt import Episode, Segment, Shot, View
from unicl.tasks.scoring import ExactMatchScorer
from unicl.tasks.transforms import object_centred_crop_box
from unicl.tasks.user import user_record

log = logging.getLogger(__name__)

TASKS: Registry[type] = Registry(
    "task",
    contract="""
    A task plugin is a subclass of unicl.tasks.Task registered with
    @TASKS.register("name"). It takes its options as keyword arguments (configs pass
    them by name under `tasks: {name: {...}}`), reads its per-category record pools
    (`pools`), chooses views of records (`train_view`, `eval_view`), lays a record
    out as one in-context pair of Segments (`pair`), and post-processes generated
    tokens into answers (`postprocess`; `postprocess_distribution` for parallel answers).
    For users' prompts it says what a demonstration and a query hold (`demo_fields`,
    `query_fields`), turns their items into records (`user_record`) and views a query
    (`query_view`); for evaluation it combines the answers of several demonstration sets
    (`combine`, with `ensembles`) and scores answers (`reference`, `scorer`). The base
    class assembles episodes. See docs/plugins.md.
    """,
)


#: the largest |length_penalty|: beams are ranked by log probability / length ** it, which
#: stays finite in float32 for answers shorter than 2 ** 12 tokens (unicl/generate.py)
MAX_LENGTH_PENALTY = 10


class PoolStats(dict):
    """Counts of records skipped while building pools, by reason (logged, never silent)."""

    def add(self, reason: str, n: int = 1) -> None:
        self[reason] = self.get(reason, 0) + n


class Task(abc.ABC):
    """Base class of task plugins (see `TASKS` for the contract).

    Subclasses set `name`, implement the abstract methods, and take their options
    as keyword arguments. Common options handled here:

    - `shots`: demonstrations per training episode (0 = query only);
    - `min_shots`: when set, each training episode draws its number of demonstrations
      uniformly from `min_shots` to `shots` (null: always `shots`), so that a model
      also learns to answer with fewer demonstrations than it was trained with at most;
    - `category_text`: put `[BOT] Category: <c_st> name <c_ed>` before the first
      pair (always on for 0-shot episodes, where it is the only task hint);
    - `image_size`: side of the square crops given to the image tokenizer;
    - `image_tokenizer`: the tokenizer of images (and masks);
    - `input_image_weight`: loss weight of input image tokens (0 = inputs carry no
      loss; the paper's single-task captioning uses 0.5);
    - `first_answer_weight`: loss weight of the first pair's answer in a training episode
      whose prompt holds nothing before it (no category text): no demonstration precedes
      it, so it cannot be told from the prompt and teaches the model to answer whatever
      stands out (1 = the paper: every pair's answer is trained; 0 = only answers that
      follow a demonstration);
    - `context_min`, `context_max`: crop side / object box's longer side; training
      draws it uniformly (scale jitter), evaluation takes the middle;
    - `jitter`: training moves the crop centre by up to this fraction of its side;
    - `flip_prob`: probability of a horizontal flip in training;
    - `cache_views`: augmented views per training record whose tokens are computed
      once and cached on disk (unicl/token_cache.py); 0 = tokenize every step;
    - `cache_dir`: where the token cache lives ("" = unicl's cache directory);
    - `num_beams`, `length_penalty`: how generated answers are decoded when the caller
      does not say: greedy (1) or beam search with this many beams, ranked by log
      probability / length ** length_penalty (unicl/generate.py); a readout choice, no
      retraining.
    """

    name: str = ""

    def __init__(
        self,
        shots: int = 3,
        min_shots: int | None = None,
        category_text: bool = False,
        image_size: int = 256,
        image_tokenizer: str = "vqgan",
        input_image_weight: float = 0.0,
        first_answer_weight: float = 1.0,
        context_min: float = 1.5,
        context_max: float = 2.5,
        jitter: float = 0.1,
        flip_prob: float = 0.5,
        cache_views: int = 8,
        cache_dir: str = "",
        num_beams: int = 1,
        length_penalty: float = 1.0,
    ) -> None:
        if shots < 0:
            raise ValueError(f"{self.name}: shots must be >= 0, got {shots}")
        if min_shots is not None and not 0 <= min_shots <= shots:
            raise ValueError(
                f"{self.name}: min_shots must lie in [0, shots={shots}] or be null, got {min_shots}"
            )
        if image_size < 8:
            raise ValueError(f"{self.name}: image_size must be >= 8 pixels, got {image_size}")
        if input_image_weight < 0:
            raise ValueError(f"{self.name}: input_image_weight must be >= 0")
        if (
            isinstance(first_answer_weight, bool)
            or not isinstance(first_answer_weight, (int, float))
            or not 0.0 <= first_answer_weight <= 1.0
        ):
            raise ValueError(
                f"{self.name}: first_answer_weight must be a number in [0, 1], "
                f"got {first_answer_weight!r}"
            )
        if not 1.0 <= context_min <= context_max:
            raise ValueError(
                f"{self.name}: need 1 <= context_min <= context_max, "
                f"got {context_min}, {context_max}"
            )
        if not 0.0 <= jitter < 0.5 or not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"{self.name}: jitter must be in [0, 0.5), flip_prob in [0, 1]")
        self.shots = shots
        self.min_shots = min_shots
        self.category_text = category_text
        self.image_size = image_size
        self.image_tokenizer = image_tokenizer
        self.input_image_weight = float(input_image_weight)
        self.first_answer_weight = float(first_answer_weight)
        self.context = (float(context_min), float(context_max))
        self.jitter = float(jitter)
        self.flip_prob = float(flip_prob)
        if cache_views < 0:
            raise ValueError(f"{self.name}: cache_views must be >= 0, got {cache_views}")
        self.cache_views = cache_views
        self.cache_dir = cache_dir
        if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
            raise ValueError(f"{self.name}: num_beams must be an integer >= 1, got {num_beams!r}")
        if (
            isinstance(length_penalty, bool)
            or not isinstance(length_penalty, numbers.Real)
            or not abs(length_penalty) <= MAX_LENGTH_PENALTY
        ):
            raise ValueError(
                f"{self.name}: length_penalty must be a number in [-{MAX_LENGTH_PENALTY}, "
                f"{MAX_LENGTH_PENALTY}], got {length_penalty!r}"
            )
        self.num_beams = num_beams
        self.length_penalty = float(length_penalty)
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

    def cache_names(self) -> tuple[str, ...]:
        """The names `cache_arrays` may return: a token cache builds an encoder for each."""
        return ("image", "mask")

    def cache_tokenizer(self, name: str) -> str:
        """The tokenizer that encodes cached array `name` (default: the image tokenizer)."""
        return self.image_tokenizer

    # ---- records ---------------------------------------------------------- #

    @abc.abstractmethod
    def load_pools(self, data_cfg: Any, split: str) -> dict[str, list[Any]]:
        """Raw per-category record pools of a split (from tasks/sources.py)."""

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
        crop = object_centred_crop_box(
            record.box, record.height, record.width, context=self.context
        )
        return View(crop, False, self.image_size)

    def train_view(self, record: Any, rng: np.random.Generator) -> View:
        """A random view: object-centred crop with scale and centre jitter, maybe flipped."""
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

    def augment(
        self, episode: Episode, rng: np.random.Generator, categories: Sequence[str] = ()
    ) -> Episode:
        """A training episode, possibly changed (training streams call this with the
        training categories; default: as is)."""
        return episode

    def parallel_answer(self) -> bool:
        """Whether the query's grid answer is predicted in one pass (see Episode.parallel)."""
        return False

    def aligned_positions(self) -> bool:
        """Whether output grid tokens share their input image's positions (Episode)."""
        return False

    # ---- user prompts and answers -------------------------------------------- #

    #: what a user's demonstration gives, in order (fields of tasks/user.py UserItem:
    #: "image", "mask", "box", "text"); unicl/inputs.py checks each before the task sees it
    demo_fields: tuple[str, ...] = ("image", "text")
    #: what a user's query gives: the demonstration's fields without the answer
    query_fields: tuple[str, ...] = ("image",)

    def user_record(self, item: Any, image_id: int, category: str) -> Any:
        """The record a user's demonstration or query (a tasks/user.py UserItem) becomes.

        Default: a `UserRecord` with the item's image, box, mask and text; a query's
        record has no text and is *unanswered* (its pair's answer segments carry no
        payload, see `Segment.answered`).
        """
        return user_record(item, image_id, category)

    def query_view(self, record: Any) -> View:
        """The view of a user's query (default: the evaluation view of a query)."""
        return self.eval_view(record, query=True)

    def postprocess_distribution(self, episode: Episode, probs: Any, vocab: Any) -> Any:
        """A parallel answer's (n, K) code probabilities per cell -> the answer."""
        raise NotImplementedError(f"{self.name}: this task has no parallel answers")

    #: whether `combine` merges the answers of several demonstration sets (ensembles); when
    #: False, `unicl eval --ensemble` answers each query once
    ensembles: bool = False

    def combine(self, answers: Sequence[Any]) -> Any:
        """One answer from the answers of several demonstration sets (ensembling).

        Default: the first set's answer (text answers are not averaged).
        """
        return answers[0]

    def reference(self, episode: Episode) -> str:
        """The query's true answer as text: its answer segments' text payloads, joined."""
        segments = episode.query[episode.generation_start() :]
        text = [s.payload for s in segments if s.modality != "special"]
        return "".join(t for t in text if isinstance(t, str)).strip()

    def scorer(self, baselines: bool = True) -> Any:
        """What `unicl eval` scores this task's answers with (tasks/scoring.py).

        Default: exact match of the answer, as text, with `reference`.
        """
        return ExactMatchScorer(self)

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
            # images, so that a swap of demonstrations keeps them off the query's image
            "query_image": query_image,
            "demo_images": [self.image_key(d.record) for d in demos],
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

    def training_shots(self, rng: np.random.Generator) -> int:
        """How many demonstrations a training episode gets (`shots`, or a draw from
        `min_shots` to `shots`)."""
        if self.min_shots is None:
            return self.shots
        return int(rng.integers(self.min_shots, self.shots + 1))

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
