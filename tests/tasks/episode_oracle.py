"""Test oracle of the tasks: episodes drawn straight from record pools, every record once as the
query (training uses unicl/streams.py's cached, resumable streams and evaluation the fixed episode
files; this is the plain form of both)."""

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from unicl.tasks.prompt import Episode, Shot


def plain_episodes(
    task,
    pools: Mapping[str, Sequence[Any]],
    rng: np.random.Generator,
    shots: int | None = None,
    train: bool = True,
) -> Iterator[Episode]:
    """Episodes of `task` over `pools`: every record once as the query, in random order.

    Demonstrations are drawn from the query's category (other images); views are
    random training views, or the fixed evaluation views with `train=False`.
    """
    k = task.shots if shots is None else shots
    items = [(c, r) for c, pool in sorted(pools.items()) for r in pool]
    for index in rng.permutation(len(items)):
        category, query = items[int(index)]
        demos = task.sample_demos(pools[category], query, k, rng)
        if train:
            shots_ = [Shot(r, task.train_view(r, rng)) for r in (query, *demos)]
        else:
            shots_ = [Shot(query, task.eval_view(query, query=True))]
            shots_ += [Shot(r, task.eval_view(r)) for r in demos]
        yield task.episode(shots_[0], shots_[1:], category)
