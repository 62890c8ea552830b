"""Task plugins, dataset readers and the synthetic shapes world (`unicl.tasks`)."""

from unicl.tasks.base import TASKS, Episode, Segment, Task

__all__ = ["TASKS", "Episode", "Segment", "Task"]
