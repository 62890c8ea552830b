"""Routing plans: which (token, expert) assignment goes where, grouped by expert (plain PyTorch).

Mixture of experts (arXiv 2312.02520): each token's K (token, expert) assignments must be grouped by
expert before the experts' FFNs run on contiguous segments of rows. Slot `s = n * K + k` is token
n's k-th choice. Two plan types describe the same grouping, split by who reads it:

    DispatchPlan  every array on the device, at a size known in advance (S = N*K slots, int32):
                  dropped slots (expert id -1) sort into a trash bucket after the last expert,
                  so `offsets[E]` (a device scalar) is the number of kept slots and nothing waits
                  for the device. The Triton kernels (`kernels/`) take this form.
    RoutingPlan   the kept assignments only (M <= S, int64), with the per-expert counts read back
                  to the host (`counts_list`) to drive per-expert loops and batched matmuls. The
                  PyTorch backends (`ops.py`, `grouped.py`) take this form.

`torch_dispatch_plan` sorts the slots by expert with sync-free PyTorch ops (the Triton
`routing_plan` computes the same arrays); `make_plan` is the same sort read back as a RoutingPlan
(`DispatchPlan.to_routing_plan`).

AG-MoE routes by attribute only, so every token of one attribute goes to the same experts.
`AttributePlan` sorts the tokens by attribute once per batch; each MoE layer then turns its
(attribute -> top-k experts) table into a `DispatchPlan` without sorting the N tokens again
(`AttributePlan.remap`; `kernels.remap` runs the same expansion as one Triton kernel on CUDA).

Letters: N tokens, K experts per token, S = N*K slots, M kept slots, E experts, A attributes,
P = A*K (attribute, choice) pairs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from unicl.moe.inputs import check_expert_ids, check_expert_range


class RoutingPlan(NamedTuple):
    """Where each kept (token, expert) assignment goes, grouped by expert (host-side counts).

    Assignment `s = n * K + k` is token `n`'s k-th choice. Dropped assignments (expert id -1)
    do not appear in the plan.
    """

    #: (M,) flat assignment index s of each kept assignment, sorted by expert (stable in s)
    slots: torch.Tensor
    #: (M,) token index n = s // K of each sorted assignment
    tokens: torch.Tensor
    #: (E,) int64 number of assignments per expert
    counts: torch.Tensor
    #: (E + 1,) int64 start of each expert's segment in the sorted order (offsets[-1] = M)
    offsets: torch.Tensor
    #: counts as a Python list (segment bounds for the per-expert loop without device syncs)
    counts_list: list[int]
    num_tokens: int
    top_k: int
    #: True when every assignment is kept (M = N * K)
    dropless: bool


class DispatchPlan(NamedTuple):
    """Where slot `s = n * K + k` (token n's k-th choice) goes in expert-contiguous order.

    All index tensors are int32 and live on the routing tensor's device. Sorted positions
    `[offsets[e], offsets[e + 1])` hold expert e's slots; positions from `offsets[E]` on hold the
    dropped slots, which no kernel reads.
    """

    #: (E + 1,) int32 exclusive prefix sum of the per-expert counts; offsets[E] = kept slots
    offsets: torch.Tensor
    #: (S,) int32 slot index at each sorted position
    sorted_slot: torch.Tensor
    #: (S,) int32 token index (slot // K) at each sorted position
    sorted_token: torch.Tensor
    #: (S,) int32 sorted position of each slot (inverse of sorted_slot)
    slot_pos: torch.Tensor
    num_tokens: int
    top_k: int
    num_experts: int

    @property
    def counts(self) -> torch.Tensor:
        """(E,) int32 number of kept slots per expert."""
        return self.offsets[1:] - self.offsets[:-1]

    def to_routing_plan(self) -> RoutingPlan:
        """The PyTorch backends' plan with the same order (reads the counts back: syncs)."""
        offsets = self.offsets.long()
        counts = offsets[1:] - offsets[:-1]  # (E,)
        kept = int(offsets[-1])
        slots = self.sorted_slot[:kept].long()  # (M,)
        return RoutingPlan(
            slots=slots,
            tokens=self.sorted_token[:kept].long(),
            counts=counts,
            offsets=offsets,
            counts_list=counts.tolist(),
            num_tokens=self.num_tokens,
            top_k=self.top_k,
            dropless=kept == self.num_tokens * self.top_k,
        )


def _exclusive_cumsum(counts: torch.Tensor) -> torch.Tensor:
    """(L,) -> (L + 1,) int32 with a leading zero."""
    out = torch.zeros(counts.numel() + 1, dtype=torch.int32, device=counts.device)
    out[1:] = torch.cumsum(counts, 0)
    return out


def _inverse(perm: torch.Tensor) -> torch.Tensor:
    """Inverse of a permutation of arange(S), by scatter (no sync)."""
    src = torch.arange(perm.numel(), dtype=perm.dtype, device=perm.device)
    return torch.empty_like(perm).scatter_(0, perm.long(), src)


def torch_dispatch_plan(expert_ids: torch.Tensor, num_experts: int) -> DispatchPlan:
    """Stable sort of the slots by expert, with sync-free PyTorch ops.

    `torch.sort(stable=True)` is a radix sort on CUDA and `scatter_add_` sizes its output from
    `num_experts`, so unlike `bincount`/boolean masks nothing waits on the device.
    """
    check_expert_ids(expert_ids, num_experts)
    n, k = expert_ids.shape
    flat = expert_ids.reshape(-1)  # (S,)
    keys = torch.where(flat < 0, num_experts, flat)  # (S,) dropped -> trash bucket E
    sorted_slot = torch.sort(keys, stable=True).indices.to(torch.int32)  # (S,)
    counts = torch.zeros(num_experts + 1, dtype=torch.int32, device=flat.device)
    counts.scatter_add_(0, keys.long(), torch.ones_like(keys, dtype=torch.int32))  # (E + 1,)
    return DispatchPlan(
        offsets=_exclusive_cumsum(counts[:num_experts]),
        sorted_slot=sorted_slot,
        sorted_token=torch.div(sorted_slot, k, rounding_mode="floor"),
        slot_pos=_inverse(sorted_slot),
        num_tokens=n,
        top_k=k,
        num_experts=num_experts,
    )


def make_plan(expert_ids: torch.Tensor, num_experts: int) -> RoutingPlan:
    """Group the (N, K) int64 routing decisions by expert (a stable sort; ids range-checked)."""
    check_expert_ids(expert_ids, num_experts, dtypes=(torch.int64,))
    check_expert_range(expert_ids, num_experts)
    return torch_dispatch_plan(expert_ids, num_experts).to_routing_plan()


class AttributePlan(NamedTuple):
    """Tokens grouped by attribute, computed once per batch and shared by every MoE layer."""

    #: (N,) int32 token indices sorted by attribute (stable: token order within an attribute)
    sorted_token: torch.Tensor
    #: (A + 1,) int32 start of each attribute's block in sorted_token
    offsets: torch.Tensor
    num_attributes: int

    @property
    def counts(self) -> torch.Tensor:
        """(A,) int32 tokens per attribute."""
        return self.offsets[1:] - self.offsets[:-1]

    def remap(self, attr_experts: torch.Tensor, num_experts: int) -> DispatchPlan:
        """This layer's `DispatchPlan` from its (A, K) attribute -> experts table (no token sort).

        Equal, as a routing, to `torch_dispatch_plan(attr_experts[attributes], num_experts)`;
        within one expert the slots are grouped by attribute instead of by token.
        """
        return torch_remap(self, attr_experts, num_experts)


def build_attribute_plan(attributes: torch.Tensor, num_attributes: int) -> AttributePlan:
    """Sort the N tokens by attribute id once per batch: attributes (N,) int in [0, A)."""
    if not isinstance(attributes, torch.Tensor) or attributes.dim() != 1:
        raise ValueError(
            f"attributes must be a 1-D (N,) tensor, got {getattr(attributes, 'shape', attributes)}"
        )
    if attributes.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"attributes must be an integer tensor, got {attributes.dtype}")
    if num_attributes < 1:
        raise ValueError(f"num_attributes must be >= 1, got {num_attributes}")
    keys = attributes.long()  # (N,)
    sorted_token = torch.sort(keys, stable=True).indices.to(torch.int32)  # (N,)
    counts = torch.zeros(num_attributes, dtype=torch.int32, device=keys.device)
    # scatter_add_ raises on an out-of-range id (CPU) or trips a device assert (CUDA)
    counts.scatter_add_(0, keys, torch.ones_like(keys, dtype=torch.int32))
    return AttributePlan(sorted_token, _exclusive_cumsum(counts), num_attributes)


def check_attr_experts(attr_experts: torch.Tensor, num_attributes: int, num_experts: int) -> None:
    """An (A, K) int64/int32 attribute -> experts table for A attributes and E >= 1 experts."""
    if not isinstance(attr_experts, torch.Tensor) or attr_experts.dim() != 2:
        raise ValueError(
            "attr_experts must be an (A, K) tensor, "
            f"got {getattr(attr_experts, 'shape', attr_experts)}"
        )
    if attr_experts.shape[0] != num_attributes:
        raise ValueError(
            f"attr_experts must have A={num_attributes} rows, got {tuple(attr_experts.shape)}"
        )
    if attr_experts.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"attr_experts must be int64 or int32, got {attr_experts.dtype}")
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts}")


def pair_schedule(
    plan: AttributePlan, attr_experts: torch.Tensor, num_experts: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The A*K (attribute, choice) pairs in expert order: the only sort a layer does.

    Returns pair_order (P,) int32 (pair p = a*K + k at each sorted pair position), pair_start
    (P + 1,) int32 (first sorted slot of each sorted pair) and offsets (E + 1,) int32.
    """
    a, k = attr_experts.shape
    flat = attr_experts.reshape(-1).long()  # (P,) P = A*K
    keys = torch.where(flat < 0, num_experts, flat)  # (P,) dropped -> trash bucket
    pair_order = torch.sort(keys, stable=True).indices  # (P,)
    pair_count = plan.counts[:, None].expand(a, k).reshape(-1)  # (P,) tokens behind each pair
    expert_counts = torch.zeros(num_experts + 1, dtype=torch.int32, device=flat.device)
    expert_counts.scatter_add_(0, keys, pair_count)  # (E + 1,)
    pair_start = _exclusive_cumsum(pair_count[pair_order])  # (P + 1,)
    return (
        pair_order.to(torch.int32),
        pair_start,
        _exclusive_cumsum(expert_counts[:num_experts]),
    )


def torch_remap(plan: AttributePlan, attr_experts: torch.Tensor, num_experts: int) -> DispatchPlan:
    """`AttributePlan.remap`: expand the sorted pairs to slots by a marked running sum (no sort)."""
    check_attr_experts(attr_experts, plan.num_attributes, num_experts)
    k = attr_experts.shape[1]
    n = plan.sorted_token.numel()
    pair_order, pair_start, offsets = pair_schedule(plan, attr_experts, num_experts)
    s = n * k
    # sorted pair q owning each sorted position = number of pair starts (after the first) at or
    # before it: mark each start, then a running sum (empty pairs add their marks together)
    marks = torch.zeros(s + 1, dtype=torch.int64, device=attr_experts.device)  # (S + 1,)
    starts = pair_start[1:-1].long()  # (P - 1,) in [0, S]
    marks.index_add_(0, starts, torch.ones_like(starts))
    q = torch.cumsum(marks[:s], 0)  # (S,)
    pair = pair_order.long().index_select(0, q)  # (S,)
    attr, choice = pair // k, pair % k  # (S,), (S,)
    pos = torch.arange(s, device=q.device)  # (S,)
    within = pos - pair_start.long().index_select(0, q)  # (S,) rank inside the attribute block
    start = plan.offsets.long().index_select(0, attr)  # (S,)
    token = plan.sorted_token.long().index_select(0, start + within)  # (S,)
    sorted_slot = (token * k + choice).to(torch.int32)  # (S,)
    return DispatchPlan(
        offsets=offsets,
        sorted_slot=sorted_slot,
        sorted_token=token.to(torch.int32),
        slot_pos=_inverse(sorted_slot),
        num_tokens=n,
        top_k=k,
        num_experts=num_experts,
    )


__all__ = [
    "AttributePlan",
    "DispatchPlan",
    "RoutingPlan",
    "build_attribute_plan",
    "check_attr_experts",
    "make_plan",
    "pair_schedule",
    "torch_dispatch_plan",
    "torch_remap",
]
