"""Packed sequences and batches: what the packer (unicl/packer.py) produces and the decoder eats.

A `PackedSequence` is one episode as 1-D token tensors (ids, routing attributes, positions, loss
weights, and for parallel mask answers the shifted `targets`), with the offsets generation needs;
`collate` right-pads sequences of one task into a `Batch` (the paper's non-mixed batches).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from unicl.generation_steps import GenerationStep


@dataclasses.dataclass
class PackedSequence:
    """One episode as tokens (all tensors are 1-D of the same length T)."""

    task: str
    category: str
    input_ids: torch.Tensor  # (T,) int64 global ids
    attributes: torch.Tensor  # (T,) int64
    positions: torch.Tensor  # (T,) int64
    loss_weights: torch.Tensor  # (T,) float32
    pair_starts: list[int]  # offset of each pair's first token; the prefix is [0, pair_starts[0])
    query_end: int  # one past the query's [EOC] (padding may follow)
    prefix_length: int  # tokens given to the model when generating the query's answer
    generation: list[GenerationStep]
    pad_id: int
    pad_attribute: int
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: (T,) int64 the token that the hidden state at t - 1 must predict (None: input_ids)
    targets: torch.Tensor | None = None
    #: (start, length) of the query's placeholder span when its answer is parallel, else None
    parallel_span: tuple[int, int] | None = None

    def __len__(self) -> int:
        return int(self.input_ids.numel())

    def truncated(self, end: int) -> PackedSequence:
        """The first `end` tokens as an input-only sequence (no targets), e.g. a prompt."""
        return dataclasses.replace(
            self,
            input_ids=self.input_ids[:end],
            attributes=self.attributes[:end],
            positions=self.positions[:end],
            loss_weights=self.loss_weights[:end],
            targets=None,
        )

    @property
    def prompt_ids(self) -> torch.Tensor:
        """(P,) the generation prompt: everything before the query's answer."""
        return self.input_ids[: self.prefix_length]

    @property
    def next_tokens(self) -> torch.Tensor:
        """(T,) the targets of the loss (the input ids, but where a parallel span replaced them)."""
        return self.input_ids if self.targets is None else self.targets

    @property
    def target_ids(self) -> torch.Tensor:
        """(G,) the query's answer as it should be generated ([EOC] included)."""
        return self.input_ids[self.prefix_length : self.query_end]


@dataclasses.dataclass
class Batch:
    """A right-padded batch of packed sequences of one task (the decoder's input)."""

    input_ids: torch.Tensor  # (B, T) int64, [PAD] on padding
    attributes: torch.Tensor  # (B, T) int64 in [0, num_attributes)
    positions: torch.Tensor  # (B, T) int64
    loss_weights: torch.Tensor  # (B, T) float32, 0 on padding
    attention_mask: torch.Tensor  # (B, T) bool, True on real tokens
    task: str
    #: (B, T) int64 loss targets in the frame of loss_weights (input_ids but for parallel spans)
    targets: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)

    def pin_memory(self) -> Batch:
        pinned = {
            f.name: getattr(self, f.name).pin_memory()
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **pinned)


def collate(sequences: Sequence[PackedSequence], pad_to: int | None = None) -> Batch:
    """Right-pad sequences of ONE task to the longest (or `pad_to`) and stack them."""
    if not sequences:
        raise ValueError("collate: no sequences given")
    tasks = {s.task for s in sequences}
    if len(tasks) != 1:
        raise ValueError(
            f"collate: a batch holds one task (non-mixed batches); got {sorted(tasks)}"
        )
    longest = max(len(s) for s in sequences)
    width = longest if pad_to is None else pad_to
    if width < longest:
        raise ValueError(
            f"collate: pad_to={pad_to} is shorter than the longest sequence ({longest})"
        )
    b = len(sequences)
    first = sequences[0]
    input_ids = torch.full((b, width), first.pad_id, dtype=torch.long)  # (B, T)
    attributes = torch.full((b, width), first.pad_attribute, dtype=torch.long)  # (B, T)
    positions = torch.zeros((b, width), dtype=torch.long)  # (B, T)
    loss_weights = torch.zeros((b, width), dtype=torch.float32)  # (B, T)
    attention_mask = torch.zeros((b, width), dtype=torch.bool)  # (B, T)
    parallel = any(s.targets is not None for s in sequences)
    targets = input_ids.clone() if parallel else None  # (B, T)
    for row, seq in enumerate(sequences):
        t = len(seq)
        if targets is not None:
            targets[row, :t] = seq.next_tokens
        input_ids[row, :t] = seq.input_ids
        attributes[row, :t] = seq.attributes
        positions[row, :t] = seq.positions
        loss_weights[row, :t] = seq.loss_weights
        attention_mask[row, :t] = True
    return Batch(
        input_ids, attributes, positions, loss_weights, attention_mask, first.task, targets
    )
