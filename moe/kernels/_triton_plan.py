"""Triton kernels that build the routing plan on the device, with no host sync.

The paper's mixture of experts (arXiv 2312.02520). `routing_plan` is a deterministic counting sort
of the N*K slots by expert in three launches (`unicl.moe.plan.torch_dispatch_plan` is its PyTorch
twin):

    1. per-block histogram   block_counts[b, e] = #slots of block b routed to e
    2. scan (one program)    offsets[e] = sum_{e' < e} counts[e'];
                             block_base[b, e] = offsets[e] + sum_{b' < b} block_counts[b', e]
    3. stable scatter        dest(s) = block_base[b, e_s] + rank of s among block b's slots of e_s

Dropped slots (id -1) are counted in bucket E, after every expert. `triton_remap` builds the same
kind of plan from an `AttributePlan` (tokens already grouped by attribute) without any token sort
(`unicl.moe.plan.torch_remap` is its PyTorch twin).

Letters: S slots, E experts (EP: E + 1 rounded up to a power of two), NB slot blocks,
P = A*K (attribute, choice) pairs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from unicl.moe.inputs import check_expert_ids
from unicl.moe.kernels._common import check_device
from unicl.moe.plan import AttributePlan, DispatchPlan, check_attr_experts, pair_schedule

_BLOCK = 256  # slots per program in kernels 1 and 3
_SCAN_CHUNK = 64  # block rows per step of the scan


# ids: (S,) int32/int64 expert of each slot, -1 = dropped
# block_counts: (NB, EP) int32 out
@triton.jit
def _block_histogram_kernel(ids_ptr, block_counts_ptr, S, E, BLOCK: tl.constexpr, EP: tl.constexpr):
    pid = tl.program_id(0)
    s = pid * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,)
    e = tl.load(ids_ptr + s, mask=s < S, other=0).to(tl.int32)
    # dropped -> bucket E; lanes past S -> EP, which matches no one-hot column
    key = tl.where(s < S, tl.where(e < 0, E, e), EP)
    onehot = (key[:, None] == tl.arange(0, EP)[None, :]).to(tl.int32)  # (BLOCK, EP)
    tl.store(block_counts_ptr + pid * EP + tl.arange(0, EP), tl.sum(onehot, axis=0))


# block_counts: (NB, EP) int32; offsets: (E + 1,) int32 out; block_base: (NB, EP) int32 out
@triton.jit
def _scan_kernel(
    block_counts_ptr, offsets_ptr, block_base_ptr, NB, E, CHUNK: tl.constexpr, EP: tl.constexpr
):
    cols = tl.arange(0, EP)
    # pass 1: per-bucket totals over all blocks
    total = tl.zeros((EP,), tl.int32)
    for b0 in range(0, NB, CHUNK):
        rows = b0 + tl.arange(0, CHUNK)
        tile = tl.load(
            block_counts_ptr + rows[:, None] * EP + cols[None, :], mask=rows[:, None] < NB, other=0
        )  # (CHUNK, EP)
        total += tl.sum(tile, axis=0)
    # exclusive scan over buckets: bucket E (dropped) starts at the number of kept slots
    running = tl.cumsum(total, axis=0) - total  # (EP,)
    tl.store(offsets_ptr + cols, running, mask=cols <= E)
    # pass 2: each block's start inside each bucket
    for b0 in range(0, NB, CHUNK):
        rows = b0 + tl.arange(0, CHUNK)
        mask = rows[:, None] < NB
        tile = tl.load(block_counts_ptr + rows[:, None] * EP + cols[None, :], mask=mask, other=0)
        before = tl.cumsum(tile, axis=0) - tile  # (CHUNK, EP) exclusive down the blocks
        tl.store(
            block_base_ptr + rows[:, None] * EP + cols[None, :],
            running[None, :] + before,
            mask=mask,
        )
        running += tl.sum(tile, axis=0)


# ids: (S,); block_base: (NB, EP) int32; sorted_slot, sorted_token, slot_pos: (S,) int32 out
@triton.jit
def _scatter_kernel(
    ids_ptr, block_base_ptr, sorted_slot_ptr, sorted_token_ptr, slot_pos_ptr, S, K, E,
    BLOCK: tl.constexpr, EP: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    s = pid * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,)
    valid = s < S
    e = tl.load(ids_ptr + s, mask=valid, other=0).to(tl.int32)
    key = tl.where(valid, tl.where(e < 0, E, e), EP)
    onehot = (key[:, None] == tl.arange(0, EP)[None, :]).to(tl.int32)  # (BLOCK, EP)
    # rank of each slot among the earlier slots of its bucket in this block: stable order
    rank = tl.sum(onehot * tl.cumsum(onehot, axis=0), axis=1) - 1  # (BLOCK,)
    base = tl.load(block_base_ptr + pid * EP + key, mask=valid, other=0)
    dest = base + rank
    tl.store(sorted_slot_ptr + dest, s, mask=valid)
    tl.store(sorted_token_ptr + dest, s // K, mask=valid)
    tl.store(slot_pos_ptr + s, dest, mask=valid)


def routing_plan(expert_ids: torch.Tensor, num_experts: int) -> DispatchPlan:
    """Sort the (N, K) routing decisions by expert on the device: three launches, no sync.

    expert_ids: (N, K) int64/int32 in [-1, E) (-1 = dropped; other values are not checked,
    since checking would sync). Deterministic (no atomics); stable in the slot index.
    """
    check_expert_ids(expert_ids, num_experts)
    check_device(expert_ids=expert_ids)
    n, k = expert_ids.shape
    s = n * k
    ids = expert_ids.reshape(-1).contiguous()  # (S,)
    ep = triton.next_power_of_2(num_experts + 1)
    nb = max(triton.cdiv(s, _BLOCK), 1)
    dev = ids.device
    block_counts = torch.empty(nb, ep, dtype=torch.int32, device=dev)  # (NB, EP)
    block_base = torch.empty(nb, ep, dtype=torch.int32, device=dev)  # (NB, EP)
    offsets = torch.empty(num_experts + 1, dtype=torch.int32, device=dev)  # (E + 1,)
    sorted_slot = torch.empty(s, dtype=torch.int32, device=dev)  # (S,)
    sorted_token = torch.empty(s, dtype=torch.int32, device=dev)  # (S,)
    slot_pos = torch.empty(s, dtype=torch.int32, device=dev)  # (S,)
    _block_histogram_kernel[(nb,)](ids, block_counts, s, num_experts, BLOCK=_BLOCK, EP=ep)
    _scan_kernel[(1,)](block_counts, offsets, block_base, nb, num_experts, CHUNK=_SCAN_CHUNK, EP=ep)
    _scatter_kernel[(nb,)](
        ids, block_base, sorted_slot, sorted_token, slot_pos, s, k, num_experts,
        BLOCK=_BLOCK, EP=ep,
    )  # fmt: skip
    return DispatchPlan(offsets, sorted_slot, sorted_token, slot_pos, n, k, num_experts)


# pair_order: (P,) int32 pair a*K+k at each sorted pair position; pair_start: (P + 1,) int32
# attr_offsets: (A + 1,) int32; attr_token: (N,) int32 tokens sorted by attribute
# sorted_slot, sorted_token, slot_pos: (S,) int32 out
@triton.jit
def _remap_kernel(
    pair_order_ptr, pair_start_ptr, attr_offsets_ptr, attr_token_ptr,
    sorted_slot_ptr, sorted_token_ptr, slot_pos_ptr, S, K, P,
    BLOCK: tl.constexpr, PCHUNK: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    j = pid * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) sorted positions
    valid = j < S
    # sorted pair owning position j = number of pair ends <= j (the pairs are few)
    q = tl.zeros((BLOCK,), tl.int32)
    for p0 in range(0, P, PCHUNK):
        p = p0 + tl.arange(0, PCHUNK)
        ends = tl.load(pair_start_ptr + 1 + p, mask=p < P, other=2147483647)  # (PCHUNK,)
        q += tl.sum((ends[None, :] <= j[:, None]).to(tl.int32), axis=1)
    q = tl.minimum(q, P - 1)
    pair = tl.load(pair_order_ptr + q, mask=valid, other=0)
    within = j - tl.load(pair_start_ptr + q, mask=valid, other=0)  # rank in the attribute block
    attr = pair // K
    tok = tl.load(attr_token_ptr + tl.load(attr_offsets_ptr + attr, mask=valid, other=0) + within,
                  mask=valid, other=0)  # fmt: skip
    slot = tok * K + pair % K
    tl.store(sorted_slot_ptr + j, slot, mask=valid)
    tl.store(sorted_token_ptr + j, tok, mask=valid)
    tl.store(slot_pos_ptr + slot, j, mask=valid)


def triton_remap(plan: AttributePlan, attr_experts: torch.Tensor, num_experts: int) -> DispatchPlan:
    """Per-layer plan from the batch's `AttributePlan`: sort A*K pairs, expand on the device."""
    check_attr_experts(attr_experts, plan.num_attributes, num_experts)
    check_device(attr_experts=attr_experts, sorted_token=plan.sorted_token)
    k = attr_experts.shape[1]
    n = plan.sorted_token.numel()
    s = n * k
    pair_order, pair_start, offsets = pair_schedule(plan, attr_experts, num_experts)
    dev = attr_experts.device
    sorted_slot = torch.empty(s, dtype=torch.int32, device=dev)  # (S,)
    sorted_token = torch.empty(s, dtype=torch.int32, device=dev)  # (S,)
    slot_pos = torch.empty(s, dtype=torch.int32, device=dev)  # (S,)
    if s:
        p = pair_order.numel()
        _remap_kernel[(triton.cdiv(s, _BLOCK),)](
            pair_order, pair_start, plan.offsets, plan.sorted_token,
            sorted_slot, sorted_token, slot_pos, s, k, p,
            BLOCK=_BLOCK, PCHUNK=min(triton.next_power_of_2(p), 64),
        )  # fmt: skip
    return DispatchPlan(offsets, sorted_slot, sorted_token, slot_pos, n, k, num_experts)
