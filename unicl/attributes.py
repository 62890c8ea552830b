"""Routing attributes: which task, token span and role a token has (the AG-MoE gate's input).

The attribute router of arXiv 2312.02520 (its mixture of experts) sends a token to experts by
its attribute, task x token span x role:

    attribute = ((task_index * n_spans) + span_index) * 2 + role

`task_index` is the task's position in the sorted list of configured task names,
`span_index` the token's span in `Vocabulary.spans` (the tokenizers in config order, then
"special" for specials and tags), `role` 0 for input and 1 for output. With tasks
(captioning, segmentation) and spans (gpt2, vqgan, bins, special) there are 2 x 4 x 2 = 16
attributes; docs/prompt.md lists them. The packer (unicl/packer.py) gives every token
its attribute.
"""

from __future__ import annotations

from collections.abc import Sequence

from unicl.tasks.prompt import Role
from unicl.vocab import Vocabulary

ROLES: dict[str, int] = {"input": 0, "output": 1}


class AttributeTable:
    """Task x span x role <-> attribute id (see the module docstring)."""

    def __init__(self, task_names: Sequence[str], spans: Sequence[str]) -> None:
        if not task_names:
            raise ValueError("AttributeTable needs at least one task name")
        if len(set(task_names)) != len(task_names):
            raise ValueError(f"task names listed twice: {list(task_names)}")
        self.tasks = sorted(task_names)
        self.spans = list(spans)

    def __len__(self) -> int:
        return len(self.tasks) * len(self.spans) * 2

    def task_index(self, task: str) -> int:
        try:
            return self.tasks.index(task)
        except ValueError:
            raise ValueError(
                f"task {task!r} is not configured; configured tasks: {', '.join(self.tasks)}"
            ) from None

    def attribute(self, task: str, span: str | int, role: Role | int) -> int:
        span_index = span if isinstance(span, int) else self.spans.index(span)
        role_id = role if isinstance(role, int) else ROLES[role]
        return (self.task_index(task) * len(self.spans) + span_index) * 2 + role_id

    def describe(self, attribute: int) -> tuple[str, str, str]:
        """attribute id -> (task, span, role)."""
        if not 0 <= attribute < len(self):
            raise ValueError(f"attribute {attribute} outside [0, {len(self)})")
        role = attribute % 2
        rest = attribute // 2
        return (
            self.tasks[rest // len(self.spans)],
            self.spans[rest % len(self.spans)],
            (
                "input",
                "output",
            )[role],
        )


def num_attributes(vocab: Vocabulary, task_names: Sequence[str]) -> int:
    """Number of routing attributes for these tasks over this vocabulary's spans."""
    return len(AttributeTable(task_names, vocab.spans))
