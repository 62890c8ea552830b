"""The task plugin contract, the `TASKS` registry and the episode data structures.

A task turns dataset records into in-context *episodes* (k demonstrations and
one query of the same category, PAPER.md "Tasks") and turns generated payloads
back into answers. An episode is a list of *pairs*; each pair is an ordered list
of `Segment`s (a modality, its raw payload, and whether it is model input or the
output the model must produce). The sequence packer (unicl/sequence.py) turns an
episode into tokens; it never needs to know which task made it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from unicl.registry import Registry

Role = Literal["input", "output"]

TASKS: Registry[type] = Registry(
    "task",
    contract="""
    A task plugin is a subclass of unicl.tasks.Task registered with
    @TASKS.register("name"). It takes its options as keyword arguments (configs pass
    them by name under `tasks: {name: {...}}`), builds episodes from dataset records
    (`episodes`), and post-processes generated payloads into answers. See
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
    """

    modality: str
    payload: Any
    role: Role = "input"


@dataclasses.dataclass
class Episode:
    """k demonstration pairs followed by one query pair, all of one category.

    `pairs[-1]` is the query; `pairs[:-1]` are the demonstrations (possibly none).
    `prefix` holds segments that come before the first pair (e.g. the category
    name as text in the 0-shot setting). `meta` carries what post-processing needs
    (record ids, crop boxes, original sizes) and is never tokenized.
    """

    task: str
    category: str
    pairs: list[list[Segment]]
    prefix: list[Segment] = dataclasses.field(default_factory=list)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def demos(self) -> list[list[Segment]]:
        return self.pairs[:-1]

    @property
    def query(self) -> list[Segment]:
        return self.pairs[-1]

    @property
    def shots(self) -> int:
        return len(self.pairs) - 1


class Task:
    """Base class of task plugins (see `TASKS` for the contract)."""

    name: str = ""
