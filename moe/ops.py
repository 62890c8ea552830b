"""Expert dispatch ops in plain PyTorch: the CPU path and the oracle for the Triton kernels.

PAPER.md "Mixture of experts": every token picks `K` of `E` experts and its output is the
gate-weighted sum of those experts' FFNs. These ops only *execute* a routing decision; they know
nothing about how it was made (hidden-state gate, attribute gate, capacity dropping).

Letters used in shape comments:
    N tokens, K experts per token (top-k), M = kept (token, expert) assignments (<= N*K),
    E experts, D model width, F expert hidden width.

The computation is split into the steps the kernel engineer mirrors:
    make_plan  -> which assignment goes where (sorted by expert, per-expert counts/offsets)
    gather     -> (M, D) rows of x in expert order
    expert_mlp -> each expert's FFN on its contiguous segment of rows
    combine    -> gate-weighted sum of the K expert outputs back into (N, D)

`expert_ffn` runs the same steps inside one autograd Function whose backward is written by hand:
it keeps only the tensors the gradients need, writes every matmul into reused scratch buffers and
turns the combine step into a per-token (1, K) x (K, D) product, which is what keeps a sparse MoE
as fast as a dense FFN of equal active FLOPs on CPU (docs/model.md, docs/BENCHMARKS.md). The step
functions are differentiable by ordinary autograd and serve as a second, simpler reference.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

ACTIVATIONS = ("gelu", "gelu_tanh", "relu")


class RoutingPlan(NamedTuple):
    """Where each kept (token, expert) assignment goes, grouped by expert.

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


def _check_routing(expert_ids: torch.Tensor, num_experts: int) -> None:
    if expert_ids.dim() != 2:
        raise ValueError(f"expert_ids must be (N, K), got shape {tuple(expert_ids.shape)}")
    if expert_ids.dtype != torch.int64:
        raise TypeError(f"expert_ids must be int64, got {expert_ids.dtype}")
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts}")
    if expert_ids.numel():
        lo, hi = int(expert_ids.min()), int(expert_ids.max())
        if lo < -1 or hi >= num_experts:
            raise ValueError(
                f"expert_ids must lie in [-1, {num_experts}) (-1 = dropped), got [{lo}, {hi}]"
            )


def make_plan(expert_ids: torch.Tensor, num_experts: int) -> RoutingPlan:
    """Group the (N, K) routing decisions by expert (a stable counting sort)."""
    _check_routing(expert_ids, num_experts)
    n, k = expert_ids.shape
    flat = expert_ids.reshape(-1)  # (N*K,)
    kept = flat >= 0
    dropless = bool(kept.all())
    # dropped assignments sort after every real expert and are cut off below
    keys = torch.where(kept, flat, num_experts)
    slots = torch.sort(keys, stable=True).indices  # (N*K,)
    counts = torch.bincount(flat[kept], minlength=num_experts)  # (E,)
    offsets = torch.zeros(num_experts + 1, dtype=torch.int64, device=flat.device)
    torch.cumsum(counts, 0, out=offsets[1:])
    m = int(offsets[-1])
    slots = slots[:m]  # (M,)
    return RoutingPlan(
        slots=slots,
        tokens=torch.div(slots, k, rounding_mode="floor"),
        counts=counts,
        offsets=offsets,
        counts_list=counts.tolist(),
        num_tokens=n,
        top_k=k,
        dropless=dropless,
    )


def activation_fn(name: str):
    """The expert nonlinearity by name (GPT-2 uses the tanh approximation of GELU)."""
    if name == "gelu":
        return F.gelu
    if name == "gelu_tanh":
        return lambda h: F.gelu(h, approximate="tanh")
    if name == "relu":
        return F.relu
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


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
    act = activation_fn(activation)
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
    _check_shapes(x, expert_ids, weights, w1, b1, w2, b2)
    plan = make_plan(expert_ids, w1.shape[0])
    ys = expert_mlp(gather(x, plan), plan, w1, b1, w2, b2, activation)
    return combine(ys, plan, weights)


# --------------------------------------------------------------------------- #
# the fused CPU path: one autograd Function with a hand-written backward
# --------------------------------------------------------------------------- #


def _act_into(name: str, h: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out = act(h), written into an existing buffer."""
    if name == "relu":
        return torch.clamp(h, min=0, out=out)
    approximate = "tanh" if name == "gelu_tanh" else "none"
    return torch.ops.aten.gelu.out(h, approximate=approximate, out=out)


def _act_backward_(name: str, grad: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """grad <- d act(h)/dh * grad, in place (h is the pre-activation)."""
    if name == "relu":
        return grad.mul_(h > 0)
    approximate = "tanh" if name == "gelu_tanh" else "none"
    return torch.ops.aten.gelu_backward.grad_input(
        grad, h, approximate=approximate, grad_input=grad
    )


class _ExpertFFN(torch.autograd.Function):
    """expert_ffn with a hand-written backward.

    Saves x, the (M, F) pre-activations and the (N, K, D) unweighted expert outputs; the gathered
    rows and the activations are recomputed segment by segment into small scratch buffers. On CPU
    every fresh large tensor costs page faults comparable to a matmul pass over it, so each expert
    segment reuses the same (max_count, .) scratch rows instead of allocating (M, .) temporaries.
    """

    @staticmethod
    def forward(ctx, x, weights, w1, b1, w2, b2, plan: RoutingPlan, activation: str):
        n, k = plan.num_tokens, plan.top_k
        d, f = x.shape[1], w1.shape[2]
        m = plan.slots.shape[0]
        c_max = max(plan.counts_list)
        hs = x.new_empty(m, f)  # (M, F) pre-activations, kept for backward
        x_scr = x.new_empty(c_max, d)  # gathered rows of one expert
        a_scr = x.new_empty(c_max, f)  # activations of one expert
        y_scr = x.new_empty(c_max, d)  # outputs of one expert
        # unweighted expert outputs in (token, choice) order; dropped rows stay zero
        y_nk = x.new_empty(n * k, d) if plan.dropless else x.new_zeros(n * k, d)
        start = 0
        for e, count in enumerate(plan.counts_list):
            if count == 0:
                continue
            stop = start + count
            xe = torch.index_select(x, 0, plan.tokens[start:stop], out=x_scr[:count])  # (m_e, D)
            torch.addmm(b1[e], xe, w1[e], out=hs[start:stop])  # (m_e, F)
            ae = _act_into(activation, hs[start:stop], a_scr[:count])  # (m_e, F)
            ye = torch.addmm(b2[e], ae, w2[e], out=y_scr[:count])  # (m_e, D)
            y_nk.index_copy_(0, plan.slots[start:stop], ye)
            start = stop
        y_nk = y_nk.view(n, k, d)  # (N, K, D)
        w = weights.to(x.dtype)
        # the combine is a batched (1, K) x (K, D) product per token: no scatter needed
        out = torch.bmm(w.view(n, 1, k), y_nk).view(n, d)  # (N, D)
        ctx.save_for_backward(x, hs, y_nk, w, w1, w2)
        ctx.plan = plan
        ctx.activation = activation
        ctx.weights_dtype = weights.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, hs, y_nk, w, w1, w2 = ctx.saved_tensors
        plan: RoutingPlan = ctx.plan
        n, k = plan.num_tokens, plan.top_k
        d, f = x.shape[1], w1.shape[2]
        c_max = max(plan.counts_list)
        grad_out = grad_out.contiguous()  # (N, D)
        # d out[n] / d weights[n, k] = <grad_out[n], y[n, k]>
        grad_weights = torch.bmm(y_nk, grad_out.view(n, d, 1)).view(n, k)  # (N, K)
        w_sorted = w.reshape(-1).index_select(0, plan.slots)  # (M,)
        gw1, gw2 = torch.zeros_like(w1), torch.zeros_like(w2)
        gb1 = w1.new_zeros(w1.shape[0], f)
        gb2 = w2.new_zeros(w2.shape[0], d)
        grad_x = torch.zeros_like(x)  # (N, D)
        x_scr = x.new_empty(c_max, d)
        g_scr = x.new_empty(c_max, d)  # gradient at one expert's outputs, then at its inputs
        a_scr = x.new_empty(c_max, f)  # activations, then the gradient at the pre-activations
        start = 0
        for e, count in enumerate(plan.counts_list):
            if count == 0:
                continue
            stop = start + count
            rows = plan.tokens[start:stop]
            xe = torch.index_select(x, 0, rows, out=x_scr[:count])  # (m_e, D)
            he = hs[start:stop]  # (m_e, F)
            ae = _act_into(ctx.activation, he, a_scr[:count])  # (m_e, F) recomputed
            gy = torch.index_select(grad_out, 0, rows, out=g_scr[:count])  # (m_e, D)
            gy.mul_(w_sorted[start:stop, None])
            torch.mm(ae.t(), gy, out=gw2[e])
            torch.sum(gy, 0, out=gb2[e])
            gh = torch.mm(gy, w2[e].t(), out=a_scr[:count])  # (m_e, F) overwrites ae
            _act_backward_(ctx.activation, gh, he)
            torch.mm(xe.t(), gh, out=gw1[e])
            torch.sum(gh, 0, out=gb1[e])
            gx = torch.mm(gh, w1[e].t(), out=g_scr[:count])  # (m_e, D) overwrites gy
            grad_x.index_add_(0, rows, gx)
            start = stop
        return grad_x, grad_weights.to(ctx.weights_dtype), gw1, gb1, gw2, gb2, None, None


def _check_shapes(x, expert_ids, weights, w1, b1, w2, b2) -> None:
    if x.dim() != 2:
        raise ValueError(f"x must be (N, D), got shape {tuple(x.shape)}")
    n, d = x.shape
    if expert_ids.dim() != 2 or expert_ids.shape[0] != n:
        raise ValueError(f"expert_ids must be (N={n}, K), got shape {tuple(expert_ids.shape)}")
    if weights.shape != expert_ids.shape:
        raise ValueError(
            f"weights must have the shape of expert_ids {tuple(expert_ids.shape)}, "
            f"got {tuple(weights.shape)}"
        )
    if w1.dim() != 3 or w1.shape[1] != d:
        raise ValueError(f"w1 must be (E, D={d}, F), got shape {tuple(w1.shape)}")
    e, _, f = w1.shape
    expected = {"b1": (b1, (e, f)), "w2": (w2, (e, f, d)), "b2": (b2, (e, d))}
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")


def expert_ffn(
    x: torch.Tensor,
    expert_ids: torch.Tensor,
    weights: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    activation: str = "gelu",
    *,
    plan: RoutingPlan | None = None,
) -> torch.Tensor:
    """y[n] = sum_k weights[n, k] * FFN_{expert_ids[n, k]}(x[n]); ids of -1 contribute nothing.

    x (N, D), expert_ids (N, K) int64, weights (N, K), w1 (E, D, F), b1 (E, F), w2 (E, F, D),
    b2 (E, D) -> (N, D). FFN_e(v) = act(v @ w1[e] + b1[e]) @ w2[e] + b2[e].
    Differentiable in x, weights and all expert parameters. `plan` is `make_plan(expert_ids, E)`
    when the caller already has it (attribute routing reuses one per batch, see moe/layer.py).
    """
    _check_shapes(x, expert_ids, weights, w1, b1, w2, b2)
    activation_fn(activation)  # validates the name
    if plan is None:
        plan = make_plan(expert_ids, w1.shape[0])
    if x.shape[0] == 0 or plan.slots.shape[0] == 0:
        return x.new_zeros(x.shape)  # nothing routed anywhere
    return _ExpertFFN.apply(x, weights, w1, b1, w2, b2, plan, activation)


def expert_ffn_flops(num_assignments: int, d_model: int, d_ff: int) -> int:
    """Multiply-add FLOPs (x2) of the expert matmuls for `num_assignments` rows, forward only."""
    return 2 * 2 * num_assignments * d_model * d_ff


__all__ = [
    "ACTIVATIONS",
    "RoutingPlan",
    "activation_fn",
    "combine",
    "expert_ffn",
    "expert_ffn_flops",
    "expert_ffn_steps",
    "expert_mlp",
    "gather",
    "make_plan",
]
