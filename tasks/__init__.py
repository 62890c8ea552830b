"""Task plugins, dataset readers and the synthetic shapes world (`unicl.tasks`).

Importing this package registers the built-in tasks "segmentation" and
"captioning" (the paper's two tasks, arXiv 2312.02520). A new task is a module
that registers a `Task` subclass with `TASKS` (see docs/plugins.md); nothing
here needs to change for it.
"""

from unicl.tasks import captioning, segmentation  # noqa: F401  (importing registers them)
from unicl.tasks.base import TASKS, Task
from unicl.tasks.prompt import Episode, Segment, Shot, View

__all__ = ["TASKS", "Episode", "Segment", "Shot", "Task", "View"]
