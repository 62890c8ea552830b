"""Non-mixed multi-task batch sampling (arXiv 2312.02520, multi-task training strategy).

Every optimiser step trains on ONE task: the whole global batch (all ranks, all
micro-batches) comes from the same task's stream. The task of step t is drawn from
a generator seeded by (seed, t) alone, so every rank computes the same task without
talking to the others, and a resumed run draws the same tasks as an uninterrupted
one. Task k is drawn with probability s_k:

    sqrt:          s_k ∝ sqrt(N_k)   (the paper)
    proportional:  s_k ∝ N_k
    uniform:       s_k = 1 / K

Within a task, examples are read in order through a per-task cursor into its
`TaskStream` (whose `examples(start, count)` is deterministic in the sample index
and wraps around epochs itself). The cursors are the sampler's only state; they
go into checkpoints, so a resume continues mid-epoch at exactly the next example.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from unicl.streams import TaskStream


def task_probabilities(sizes: Mapping[str, int], mode: str = "sqrt") -> dict[str, float]:
    """Sampling probability s_k of each task from its dataset size N_k."""
    if not sizes:
        raise ValueError("no training tasks: configure at least one task under `tasks:`")
    empty = [name for name, n in sizes.items() if n <= 0]
    if empty:
        raise ValueError(f"training tasks with no examples: {empty}; check the dataset paths")
    if mode == "sqrt":
        raw = {name: math.sqrt(n) for name, n in sizes.items()}
    elif mode == "proportional":
        raw = {name: float(n) for name, n in sizes.items()}
    elif mode == "uniform":
        raw = {name: 1.0 for name in sizes}
    else:
        raise ValueError(
            f"train.task_sampling must be one of sqrt, proportional, uniform; got {mode!r}"
        )
    total = sum(raw.values())
    return {name: value / total for name, value in raw.items()}


@dataclasses.dataclass
class StepPlan:
    """What one optimiser step trains on: one task, a slice of its stream per rank."""

    step: int
    task: str
    #: index of the first example of the global batch in the task's stream
    start: int
    #: this rank's examples of the step, one list per micro-batch
    micro_batches: list[list[Any]]


class TaskSampler:
    """Chooses each step's task and hands every rank its share of the global batch.

    The global batch of step t is examples [c, c + B) of the chosen task's stream,
    where c is the task's cursor. Rank r takes B / world_size consecutive examples
    starting at c + r * B / world_size and splits them into micro-batches; so the
    global batch is the same whatever the number of ranks or micro-batches.
    """

    def __init__(
        self,
        streams: Mapping[str, TaskStream],
        *,
        global_batch: int,
        seed: int = 0,
        mode: str = "sqrt",
        rank: int = 0,
        world_size: int = 1,
        micro_batch: int | None = None,
    ) -> None:
        if global_batch < 1:
            raise ValueError(f"global_batch must be >= 1, got {global_batch}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
        if global_batch % world_size:
            raise ValueError(
                f"the global batch ({global_batch}) is not divisible by the number of ranks "
                f"({world_size})"
            )
        per_rank = global_batch // world_size
        micro_batch = per_rank if micro_batch is None else micro_batch
        if per_rank % micro_batch:
            raise ValueError(
                f"the per-rank batch ({per_rank}) is not divisible by micro_batch ({micro_batch})"
            )
        self.streams = dict(streams)
        self.tasks: list[str] = sorted(self.streams)
        self.probabilities = task_probabilities(
            {name: int(self.streams[name].size) for name in self.tasks}, mode
        )
        self._p = np.array([self.probabilities[name] for name in self.tasks], dtype=np.float64)
        self.global_batch = global_batch
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.per_rank = per_rank
        self.micro_batch = micro_batch
        self.cursors: dict[str, int] = {name: 0 for name in self.tasks}

    def task_at(self, step: int) -> str:
        """The task of optimiser step `step` (a pure function of seed and step)."""
        # SeedSequence mixes both words, so neighbouring seeds/steps are unrelated draws
        rng = np.random.default_rng([self.seed, step])
        return self.tasks[int(rng.choice(len(self.tasks), p=self._p))]

    def next(self, step: int) -> StepPlan:
        """This rank's examples for step `step`; advances the chosen task's cursor."""
        task = self.task_at(step)
        start = self.cursors[task]
        examples = self.streams[task].examples(start + self.rank * self.per_rank, self.per_rank)
        if len(examples) != self.per_rank:
            raise RuntimeError(
                f"task {task!r}: stream returned {len(examples)} examples for "
                f"examples({start + self.rank * self.per_rank}, {self.per_rank})"
            )
        self.cursors[task] = start + self.global_batch
        micro = [
            examples[i : i + self.micro_batch] for i in range(0, self.per_rank, self.micro_batch)
        ]
        return StepPlan(step=step, task=task, start=start, micro_batches=micro)

    def counts(self, steps: int, start: int = 0) -> dict[str, int]:
        """How many of steps [start, start + steps) each task gets (for reports)."""
        out = {name: 0 for name in self.tasks}
        for step in range(start, start + steps):
            out[self.task_at(step)] += 1
        return out

    # ---- checkpoint state ------------------------------------------------ #

    def state_dict(self) -> dict[str, Any]:
        return {
            "cursors": dict(self.cursors),
            "seed": self.seed,
            "global_batch": self.global_batch,
            "tasks": list(self.tasks),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore cursors; refuses a state written for other tasks, seed or batch."""
        mismatches: Sequence[str] = [
            f"{key}: checkpoint {state.get(key)!r} != now {mine!r}"
            for key, mine in (
                ("tasks", list(self.tasks)),
                ("seed", self.seed),
                ("global_batch", self.global_batch),
            )
            if state.get(key) != mine
        ]
        if mismatches:
            raise ValueError(
                "the checkpoint's task sampler does not match this config: " + "; ".join(mismatches)
            )
        self.cursors = {name: int(state["cursors"][name]) for name in self.tasks}
