"""Expert dispatch ops in plain PyTorch: the CPU path and the oracle for the Triton kernels.

Mixture of experts (arXiv 2312.02520): every token picks `K` of `E` experts and its output is the
gate-weighted sum of those experts' FFNs. These ops only *execute* a routing decision; they know
nothing about how it was made (hidden-state gate, attribute gate, capacity dropping).

Letters used in shape comments:
    N tokens, K experts per token (top-k), M = kept (token, expert) assignments (<= N*K),
    E experts, D model width, F expert hidden width.

The computation is split into the steps the kernel engineer mirrors:
    make_plan  -> which assignment goes where (plan.py: sorted by expert, per-expert counts)
    gather     -> (M, D) rows of x in expert order
    expert_mlp -> each expert's FFN on its contiguous segment of rows
    combine    -> gate-weighted sum of the K expert outputs back into (N, D)

`expert_ffn` runs the same steps inside one autograd Function whose backward is written by hand:
with balanced routing every expert is padded to the same row count and each matmul is one batched
matmul over all experts (skewed routing loops over experts), per-call temporaries live in a
reused CPU workspace, and the combine is a per-token (1, K) x (K, D) product. That is what keeps a
sparse MoE as fast as a dense FFN of equal active FLOPs on CPU (docs/model.md,
docs/BENCHMARKS.md). The step functions are differentiable by ordinary autograd and serve as a
second, simpler reference.
"""

from __future__ import annotations

import math
import threading
from typing import NamedTuple

import torch

from unicl.moe.activations import get_activation
from unicl.moe.inputs import check_expert_ffn_shapes
from unicl.moe.plan import RoutingPlan, make_plan

# --------------------------------------------------------------------------- #
# the steps, by ordinary autograd
# --------------------------------------------------------------------------- #


def gather(x: torch.Tensor, plan: RoutingPlan) -> torch.Tensor:
    """Rows of x in expert order: (N, D) -> (M, D)."""
    return x.index_select(0, plan.tokens)


def expert_mlp(
    xs: torch.Tensor,
    plan: RoutingPlan,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    activation: str = "gelu",
) -> torch.Tensor:
    """Each expert's FFN on its contiguous segment of the sorted rows: (M, D) -> (M, D)."""
    act = get_activation(activation)
    outs = []
    start = 0
    for e, count in enumerate(plan.counts_list):
        if count == 0:
            continue
        seg = xs[start : start + count]  # (m_e, D)
        h = act(torch.addmm(b1[e], seg, w1[e]))  # (m_e, F)
        outs.append(torch.addmm(b2[e], h, w2[e]))  # (m_e, D)
        start += count
    if not outs:
        return xs.new_zeros(xs.shape)
    return torch.cat(outs, 0)


def combine(ys: torch.Tensor, plan: RoutingPlan, weights: torch.Tensor) -> torch.Tensor:
    """Gate-weighted sum of the expert outputs per token: (M, D) -> (N, D)."""
    w = weights.reshape(-1).index_select(0, plan.slots).to(ys.dtype)  # (M,)
    out = ys.new_zeros(plan.num_tokens, ys.shape[1])  # (N, D)
    return out.index_add(0, plan.tokens, ys * w[:, None])


def expert_ffn_steps(
    x, expert_ids, weights, w1, b1, w2, b2, activation: str = "gelu"
) -> torch.Tensor:
    """`expert_ffn` composed from the step functions (plain autograd; a second reference)."""
    check_expert_ffn_shapes(x, expert_ids, weights, w1, b1, w2, b2)
    plan = make_plan(expert_ids, w1.shape[0])
    ys = expert_mlp(gather(x, plan), plan, w1, b1, w2, b2, activation)
    return combine(ys, plan, weights)


# --------------------------------------------------------------------------- #
# the fused CPU path: one autograd Function with a hand-written backward
# --------------------------------------------------------------------------- #


#: When routing is balanced, every expert's rows are padded to the largest count and all experts
#: run as one batched matmul; the padding may add at most this fraction of rows (wasted FLOPs).
#: Beyond it experts are packed back to back and run one matmul each.
MAX_PADDING = 0.125


class _Workspace(threading.local):
    """One reusable flat buffer per (device, dtype) for the fused path's temporaries (CPU only).

    glibc's malloc maps every block over 32 MiB fresh and unmaps it on free, so a new large
    temporary costs a page fault per 4 KiB on first touch, comparable to a matmul pass over it.
    Temporaries that die within one forward or one backward call (expert outputs before the
    combine, row gradients) therefore live here and are reused call after call; saved tensors and
    returned gradients never do. GPUs have PyTorch's caching allocator and skip this.
    """

    def __init__(self):
        self.buffers: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def take(self, like: torch.Tensor, *shapes: tuple[int, ...]) -> list[torch.Tensor]:
        """Uninitialised tensors of these shapes, disjoint views of one buffer."""
        sizes = [math.prod(shape) for shape in shapes]
        if like.device.type != "cpu":
            return [like.new_empty(shape) for shape in shapes]
        key = (like.device, like.dtype)
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < sum(sizes):
            self.buffers[key] = buf = like.new_empty(sum(sizes))
        views, start = [], 0
        for shape, size in zip(shapes, sizes):
            views.append(buf[start : start + size].view(shape))
            start += size
        return views

    def clear(self) -> None:
        self.buffers.clear()


_workspace = _Workspace()


def release_workspace() -> None:
    """Free this thread's cached CPU temporaries of `expert_ffn` (they are re-made on demand)."""
    _workspace.clear()


class _Block(NamedTuple):
    """Experts `first:end`, each `rows` rows long, stacked from row `row0` of the work buffers."""

    first: int
    end: int
    row0: int
    rows: int

    def view(self, t: torch.Tensor) -> torch.Tensor:
        """(experts, rows, C) view of this block's rows of a (R, C) buffer."""
        n = self.end - self.first
        return t[self.row0 : self.row0 + n * self.rows].view(n, self.rows, t.shape[1])


class _Layout(NamedTuple):
    """Where the rows of each expert sit in the (rows, .) work buffers of the fused path."""

    rows: int
    blocks: list[_Block]
    #: experts without rows (their gradients are zero)
    idle: list[int]
    #: (rows,) token whose input each row holds (padding rows read token 0)
    tokens: torch.Tensor
    #: (rows,) the (token, choice) slot of each row; padding rows point at an extra zero weight N*K
    row_slots: torch.Tensor
    #: (N*K,) the row of each slot; a dropped slot points at row `rows`, the zero row of (rows + 1)
    slot_rows: torch.Tensor
    #: padding rows (their inputs are zeroed so that they add exactly nothing to any gradient)
    padding: torch.Tensor | None


def _layout(plan: RoutingPlan, max_padding: float | None = None) -> _Layout:
    max_padding = MAX_PADDING if max_padding is None else max_padding
    counts = plan.counts_list
    e_all, m = len(counts), plan.slots.shape[0]
    c_max = max(counts)
    dev = plan.slots.device
    padding = None
    if e_all > 1 and e_all * c_max <= (1 + max_padding) * m:
        rows = e_all * c_max
        shift = torch.arange(e_all, device=dev) * c_max - plan.offsets[:-1]  # (E,)
        row_of = torch.arange(m, device=dev) + shift.repeat_interleave(plan.counts, output_size=m)
        tokens = plan.tokens.new_zeros(rows).index_copy_(0, row_of, plan.tokens)
        row_slots = plan.slots.new_full((rows,), plan.num_tokens * plan.top_k)
        row_slots.index_copy_(0, row_of, plan.slots)
        if rows > m:
            padding = (row_slots == plan.num_tokens * plan.top_k).nonzero().squeeze(1)
        blocks, idle = [_Block(0, e_all, 0, c_max)], []
    else:
        rows = m
        row_of, tokens, row_slots = torch.arange(m, device=dev), plan.tokens, plan.slots
        starts = plan.offsets.tolist()
        blocks = [_Block(e, e + 1, starts[e], c) for e, c in enumerate(counts) if c]
        idle = [e for e, c in enumerate(counts) if not c]
    slot_rows = torch.full((plan.num_tokens * plan.top_k,), rows, dtype=torch.int64, device=dev)
    slot_rows.index_copy_(0, plan.slots, row_of)
    return _Layout(rows, blocks, idle, tokens, row_slots, slot_rows, padding)


def _expert_mm(lay: _Layout, a, w, bias, out):
    """out = a @ w[e] (+ bias[e]) on the rows of every expert e; w is (E, A, B)."""
    for b in lay.blocks:
        ws = w[b.first : b.end]
        if bias is None:
            torch.bmm(b.view(a), ws, out=b.view(out))
        else:
            torch.baddbmm(bias[b.first : b.end].unsqueeze(1), b.view(a), ws, out=b.view(out))
    return out


def _expert_grads(lay: _Layout, a, grad, grad_w, grad_b):
    """grad_w[e] = a^T @ grad and grad_b[e] = the column sums of grad, on the rows of expert e."""
    for b in lay.blocks:
        gv = b.view(grad)
        torch.bmm(b.view(a).transpose(1, 2), gv, out=grad_w[b.first : b.end])
        torch.sum(gv, 1, out=grad_b[b.first : b.end])
    if lay.idle:
        grad_w[lay.idle] = 0
        grad_b[lay.idle] = 0


class _ExpertFFN(torch.autograd.Function):
    """expert_ffn with a hand-written backward.

    The kept assignments are gathered once into expert-ordered rows (`_Layout`). With balanced
    routing every expert is padded to the largest count and each of the six matmuls is a single
    batched matmul over all experts, which on CPU runs about as fast as the dense FFN's matmuls of
    the same FLOPs; skewed routing runs one matmul per expert instead. Saves the gathered rows,
    the (rows, F) pre-activations and activations (what a dense FFN of the same active width
    keeps), and the (N, K, D) unweighted expert outputs. The combine is a gather of the (token,
    choice) rows and one (1, K) x (K, D) product per token; its gradient a gather and a sum over K.
    """

    @staticmethod
    def forward(ctx, x, weights, w1, b1, w2, b2, plan: RoutingPlan, activation: str):
        n, k = plan.num_tokens, plan.top_k
        d, f = x.shape[1], w1.shape[2]
        lay = _layout(plan)
        xs = x.index_select(0, lay.tokens)  # (R, D)
        if lay.padding is not None:
            xs.index_fill_(0, lay.padding, 0)
        hs = _expert_mm(lay, xs, w1, b1, x.new_empty(lay.rows, f))  # (R, F) pre-activations
        act = get_activation(activation)
        acts = act.into(hs, torch.empty_like(hs))  # (R, F)
        (ys,) = _workspace.take(x, (lay.rows + 1, d))  # last row: the output of a dropped slot
        ys[-1].zero_()
        _expert_mm(lay, acts, w2, b2, ys)
        y_nk = ys.index_select(0, lay.slot_rows).view(n, k, d)  # (N, K, D)
        w = weights.to(x.dtype)
        out = torch.bmm(w.view(n, 1, k), y_nk).view(n, d)  # (N, D)
        ctx.save_for_backward(xs, hs, acts, y_nk, w, w1, w2)
        ctx.layout = lay
        ctx.activation = act
        ctx.weights_dtype = weights.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        xs, hs, acts, y_nk, w, w1, w2 = ctx.saved_tensors
        lay: _Layout = ctx.layout
        n, k, d = y_nk.shape
        grad_out = grad_out.contiguous()  # (N, D)
        # d out[n] / d weights[n, k] = <grad_out[n], y[n, k]>
        grad_weights = torch.bmm(y_nk, grad_out.view(n, d, 1)).view(n, k)  # (N, K)
        # gradient at each row's expert output: the token's output gradient times its gate weight
        # (zero on padding rows, whose weight is the appended zero)
        row_w = torch.cat([w.reshape(-1), w.new_zeros(1)]).index_select(0, lay.row_slots)  # (R,)
        # (R + 1, D) row gradients, later the input gradients, and (R, F) pre-activation gradients
        gy, gh = _workspace.take(grad_out, (lay.rows + 1, d), tuple(hs.shape))
        torch.index_select(grad_out, 0, lay.tokens, out=gy[:-1]).mul_(row_w[:, None])
        if lay.padding is not None:
            gy.index_fill_(0, lay.padding, 0)  # exactly zero even where grad_out is not finite
        gw1, gw2 = torch.empty_like(w1), torch.empty_like(w2)
        gb1, gb2 = w1.new_empty(w1.shape[0], w1.shape[2]), w2.new_empty(w2.shape[0], d)
        _expert_grads(lay, acts, gy, gw2, gb2)
        _expert_mm(lay, gy, w2.transpose(1, 2), None, gh)
        ctx.activation.backward_(gh, hs)
        _expert_grads(lay, xs, gh, gw1, gb1)
        _expert_mm(lay, gh, w1.transpose(1, 2), None, gy)  # (R, D) input gradient of each row
        gy[-1].zero_()
        grad_x = gy.index_select(0, lay.slot_rows).view(n, k, d).sum(1)  # (N, D)
        return grad_x, grad_weights.to(ctx.weights_dtype), gw1, gb1, gw2, gb2, None, None


def expert_ffn(
    x: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor,
    w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
    activation: str = "gelu", *, plan: RoutingPlan | None = None,
) -> torch.Tensor:  # fmt: skip
    """y[n] = sum_k weights[n, k] * FFN_{expert_ids[n, k]}(x[n]); ids of -1 contribute nothing.

    x (N, D), expert_ids (N, K) int64, weights (N, K), w1 (E, D, F), b1 (E, F), w2 (E, F, D),
    b2 (E, D) -> (N, D). FFN_e(v) = act(v @ w1[e] + b1[e]) @ w2[e] + b2[e].
    Differentiable in x, weights and all expert parameters. `plan` is `make_plan(expert_ids, E)`
    when the caller already has it (attribute routing reuses one per batch, see moe/layer.py).
    """
    check_expert_ffn_shapes(x, expert_ids, weights, w1, b1, w2, b2)
    get_activation(activation)  # validates the name
    if plan is None:
        plan = make_plan(expert_ids, w1.shape[0])
    if x.shape[0] == 0 or plan.slots.shape[0] == 0:
        return x.new_zeros(x.shape)  # nothing routed anywhere
    return _ExpertFFN.apply(x, weights, w1, b1, w2, b2, plan, activation)


__all__ = [
    "combine",
    "expert_ffn",
    "expert_ffn_steps",
    "expert_mlp",
    "gather",
    "release_workspace",
]
