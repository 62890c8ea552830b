"""Non-mixed task sampling: probabilities, determinism, rank slices, resumable cursors."""

from __future__ import annotations

import math

import pytest

from unicl.training.sampler import TaskSampler, task_probabilities


class CountingStream:
    """A task stream whose example i is the tuple (name, i mod size)."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size

    def examples(self, start: int, count: int) -> list[tuple[str, int]]:
        return [(self.name, i % self.size) for i in range(start, start + count)]


def streams(seg: int = 100, cap: int = 400) -> dict[str, CountingStream]:
    return {"segmentation": CountingStream("seg", seg), "captioning": CountingStream("cap", cap)}


def test_probabilities_by_mode():
    sizes = {"a": 100, "b": 400}
    assert task_probabilities(sizes, "sqrt") == pytest.approx({"a": 1 / 3, "b": 2 / 3})
    assert task_probabilities(sizes, "proportional") == pytest.approx({"a": 0.2, "b": 0.8})
    assert task_probabilities(sizes, "uniform") == pytest.approx({"a": 0.5, "b": 0.5})
    with pytest.raises(ValueError, match="task_sampling"):
        task_probabilities(sizes, "cubic")
    with pytest.raises(ValueError, match="no examples"):
        task_probabilities({"a": 0, "b": 3})


def test_frequencies_follow_sqrt_of_size():
    sampler = TaskSampler(streams(100, 900), global_batch=4, seed=3)
    counts = sampler.counts(4000)
    # sqrt: 10 : 30 -> captioning 3/4 of the steps; 4000 draws have std ~27
    assert abs(counts["captioning"] / 4000 - 0.75) < 0.03
    uniform = TaskSampler(streams(100, 900), global_batch=4, seed=3, mode="uniform").counts(4000)
    assert abs(uniform["captioning"] / 4000 - 0.5) < 0.03


def test_task_is_a_function_of_seed_and_step_only():
    a = TaskSampler(streams(), global_batch=8, seed=1, rank=0, world_size=2)
    b = TaskSampler(streams(), global_batch=8, seed=1, rank=1, world_size=2, micro_batch=2)
    tasks = [a.task_at(t) for t in range(200)]
    assert tasks == [b.task_at(t) for t in range(200)]
    assert len(set(tasks)) == 2
    other = TaskSampler(streams(), global_batch=8, seed=2)
    assert tasks != [other.task_at(t) for t in range(200)]


def test_one_task_per_step_and_ranks_partition_the_global_batch():
    one = TaskSampler(streams(), global_batch=8, seed=0, micro_batch=2)
    ranks = [
        TaskSampler(streams(), global_batch=8, seed=0, rank=r, world_size=2, micro_batch=2)
        for r in range(2)
    ]
    for step in range(30):
        plan = one.next(step)
        assert len(plan.micro_batches) == 4 and all(len(m) == 2 for m in plan.micro_batches)
        single = [x for m in plan.micro_batches for x in m]
        assert {name for name, _ in single} == {"seg" if plan.task == "segmentation" else "cap"}
        split = [r.next(step) for r in ranks]
        assert all(p.task == plan.task for p in split)
        assert [x for p in split for m in p.micro_batches for x in m] == single


def test_cursors_walk_each_stream_in_order_across_epochs():
    sampler = TaskSampler(streams(seg=10, cap=10), global_batch=4, seed=0)
    seen = {"segmentation": [], "captioning": []}
    for step in range(20):
        plan = sampler.next(step)
        seen[plan.task] += [i for m in plan.micro_batches for _, i in m]
    for task, ids in seen.items():
        assert ids == [i % 10 for i in range(len(ids))]
        assert sampler.cursors[task] == len(ids)


def test_resume_mid_epoch_continues_exactly():
    straight = TaskSampler(streams(seg=7, cap=13), global_batch=3, seed=5)
    expected = [straight.next(t) for t in range(40)]
    first = TaskSampler(streams(seg=7, cap=13), global_batch=3, seed=5)
    for t in range(17):
        first.next(t)
    state = first.state_dict()
    resumed = TaskSampler(streams(seg=7, cap=13), global_batch=3, seed=5)
    resumed.load_state_dict(state)
    for t in range(17, 40):
        plan = resumed.next(t)
        assert (plan.task, plan.micro_batches) == (expected[t].task, expected[t].micro_batches)


def test_state_from_another_setup_is_refused():
    state = TaskSampler(streams(), global_batch=4, seed=0).state_dict()
    with pytest.raises(ValueError, match="global_batch"):
        TaskSampler(streams(), global_batch=8, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        TaskSampler(streams(), global_batch=4, seed=1).load_state_dict(state)


def test_bad_batch_splits_are_clear_errors():
    with pytest.raises(ValueError, match="not divisible by the number of ranks"):
        TaskSampler(streams(), global_batch=5, world_size=2)
    with pytest.raises(ValueError, match="micro_batch"):
        TaskSampler(streams(), global_batch=8, world_size=2, micro_batch=3)
    assert math.isclose(sum(TaskSampler(streams(), global_batch=2).probabilities.values()), 1.0)
