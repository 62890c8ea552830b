"""Training data: per-task streams of packed episodes, read from the token cache.

`TaskStream.examples(start, count)` is deterministic in the sample index:
epoch = index // size walks a per-(seed, task, epoch) permutation of the records
(each record is the query once per epoch), and the demos and views of sample i
come from a generator seeded by (seed, task, i). Resuming is just the cursor. The
views' codes come from the token cache (unicl/token_cache.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import numpy as np

from unicl.batch import PackedSequence, collate
from unicl.packer import Packer
from unicl.plugins import import_plugins
from unicl.seeding import keyed_rng
from unicl.tasks.base import TASKS, Task
from unicl.tasks.prompt import Episode, Shot
from unicl.token_cache import TokenCache, default_cache_root

log = logging.getLogger(__name__)

__all__ = [
    "TaskStream",
    "build_packer",
    "build_task_streams",
    "build_tasks",
    "collate",
]


# --------------------------------------------------------------------------- #
# building tasks and the packer from a config
# --------------------------------------------------------------------------- #


def build_tasks(cfg: Any, vocab: Any = None) -> dict[str, Task]:
    """The configured task plugins (`cfg.tasks`), bound to `vocab` when given."""
    import unicl.tasks  # noqa: F401  (registers the built-in tasks)

    import_plugins(cfg.plugins)
    tasks = {}
    for name, options in cfg.tasks.items():
        task = TASKS.build(name, **dict(options or {}))
        if vocab is not None:
            task.bind(vocab)
        tasks[name] = task
    return tasks


def build_packer(cfg: Any, vocab: Any, tasks: dict[str, Task]) -> Packer:
    """The packer of a run: its tasks, its position budget, the tasks' loss options."""
    return Packer(
        vocab,
        sorted(tasks),
        max_positions=getattr(cfg.model, "max_positions", None),
        input_image_weight={name: task.input_image_weight for name, task in tasks.items()},
        first_answer_weight={name: task.first_answer_weight for name, task in tasks.items()},
    )


# --------------------------------------------------------------------------- #
# per-task training streams
# --------------------------------------------------------------------------- #


@dataclasses.dataclass
class TaskStream:
    """Deterministic, endless training examples of one task (see the module docstring)."""

    task: Task
    pools: dict[str, list[Any]]
    packer: Packer
    seed: int = 0
    cache: TokenCache | None = None

    def __post_init__(self) -> None:
        self.records = [
            (category, self.task.record_id(r), r)
            for category, pool in sorted(self.pools.items())
            for r in pool
        ]
        self._permutations: dict[int, np.ndarray] = {}

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def size(self) -> int:
        """Dataset size: records that serve as queries once per epoch."""
        return len(self.records)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            if len(self._permutations) > 4:
                self._permutations.clear()
            rng = keyed_rng(self.seed, "epoch", self.task.name, epoch)
            self._permutations[epoch] = rng.permutation(self.size)
        return self._permutations[epoch]

    def _shot(self, record: Any, rng: np.random.Generator) -> Shot:
        if self.cache is None:
            return Shot(record, self.task.train_view(record, rng))
        v = int(rng.integers(self.cache.views_per_record))
        return self.cache.shot(record, self.task.record_id(record), v)

    def draw(self, index: int) -> tuple[str, Shot, list[Shot]]:
        """Category, query shot and demonstration shots of sample `index`."""
        if index < 0:
            raise ValueError(f"sample index must be >= 0, got {index}")
        epoch, position = divmod(index, self.size)
        category, _, query = self.records[int(self._permutation(epoch)[position])]
        rng = keyed_rng(self.seed, "sample", self.task.name, index)
        shots = self.task.training_shots(rng)
        demos = self.task.sample_demos(self.pools[category], query, shots, rng)
        query_shot = self._shot(query, rng)
        return category, query_shot, [self._shot(d, rng) for d in demos]

    def episode(self, index: int) -> Episode:
        """The episode of sample `index` (before packing)."""
        category, query, demos = self.draw(index)
        episode = self.task.episode(query, demos, category)
        rng = keyed_rng(self.seed, "augment", self.task.name, index)
        return self.task.augment(episode, rng, categories=sorted(self.pools))

    def example(self, index: int) -> PackedSequence:
        return self.packer.pack(self.episode(index))

    def examples(self, start: int, count: int) -> list[PackedSequence]:
        """Packed samples start, ..., start + count - 1 (wrapping over epochs)."""
        return [self.example(i) for i in range(start, start + count)]


def build_task_streams(
    cfg: Any,
    vocab: Any,
    split: str = "train",
    use_cache: bool = True,
    progress: bool = True,
) -> dict[str, TaskStream]:
    """One TaskStream per configured task (the token caches are built on first use)."""
    tasks = build_tasks(cfg, vocab)
    packer = build_packer(cfg, vocab, tasks)
    streams = {}
    for name, task in sorted(tasks.items()):
        pools = task.pools(cfg.data, split)
        cache = None
        if use_cache and task.cache_views > 0:
            records = [(task.record_id(r), r) for _, pool in sorted(pools.items()) for r in pool]
            root = default_cache_root(task)
            os.makedirs(root, exist_ok=True)
            workers = cfg.data.workers or min(os.cpu_count() or 1, 8)
            cache = TokenCache.build(
                task, vocab, records, split, cfg.seed, root, progress=progress, workers=workers
            )
        streams[name] = TaskStream(task, pools, packer, seed=cfg.seed, cache=cache)
        log.info("%s/%s: %d training records", name, split, streams[name].size)
    return streams
