"""The Triton expert FFN: plan -> fused gather + grouped GEMM -> grouped GEMM -> combine.

The paper's mixture of experts (arXiv 2312.02520). Same signature and semantics as
`unicl.moe.ops.expert_ffn` (the oracle), as one autograd Function whose backward reuses the
forward's plan:

    forward                                        backward (dout (N, D))
    plan    = routing_plan(expert_ids)             dY, dw = combine_backward(dout, Y, w)
    Z, H    = grouped_mm(x[tok], w1) + b1, act     dW2, db2 = grouped_wgrad(act(Z), dY)
    Y       = grouped_mm(H, w2) + b2               dZ = grouped_mm(dY, w2^T) * act'(Z)
    out     = combine(Y, w)                        dW1, db1 = grouped_wgrad(x[tok], dZ)
                                                   dX = grouped_mm(dZ, w1^T); dx = combine(dX)

Saved for backward: Z (S, F) and Y (S, D); H is recomputed from Z inside the weight-gradient
kernel, x rows are re-read through the plan. Nothing syncs with the host.

Letters: N tokens, K choices, S = N*K slots, E experts, D model width, F expert hidden width.
"""

from __future__ import annotations

import torch

from unicl.moe.activations import get_activation
from unicl.moe.inputs import check_expert_ffn_shapes, check_expert_ids
from unicl.moe.kernels._common import check_device, check_float
from unicl.moe.kernels._gemm import grouped_mm, grouped_wgrad
from unicl.moe.kernels._rows import combine, combine_backward, gather_rows
from unicl.moe.kernels._triton_plan import routing_plan
from unicl.moe.plan import DispatchPlan


class _ExpertFFNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weights, w1, b1, w2, b2, expert_ids, plan: DispatchPlan, act: int):
        s = plan.num_tokens * plan.top_k
        # fused dispatch: GEMM 1 reads x's rows through the plan, no (S, D) copy
        h, z = grouped_mm(
            x, w1, plan.offsets, s, bias=b1, gather_idx=plan.sorted_token, activation=act,
            store_pre=True,
        )  # fmt: skip
        y, _ = grouped_mm(h, w2, plan.offsets, s, bias=b2)  # (S, D)
        out = combine(y, plan, expert_ids, weights)  # (N, D)
        ctx.save_for_backward(x, weights, w1, w2, expert_ids, z if act else h, y)
        ctx.plan = plan
        ctx.act = act
        ctx.has_bias = (b1 is not None, b2 is not None)
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weights, w1, w2, expert_ids, z, y = ctx.saved_tensors
        plan: DispatchPlan = ctx.plan
        act = ctx.act
        s = plan.num_tokens * plan.top_k
        need = ctx.needs_input_grad
        dout = dout.contiguous()  # (N, D)
        # combine: dY[pos(s)] = w_s * dout[n], dw_s = <dout[n], Y[pos(s)]>
        dy, dw = combine_backward(dout, y, plan, expert_ids, weights, need_dw=need[1])
        dw2 = db2 = dw1 = db1 = dx = None
        if need[4] or need[5]:
            dw2, db2 = grouped_wgrad(z, dy, plan.offsets, activation=act, with_bias=need[5])
        if need[0] or need[2] or need[3]:
            # through GEMM 2 and the activation in one kernel: dZ = (dY @ w2^T) * act'(Z)
            dz, _ = grouped_mm(
                dy, w2.transpose(1, 2), plan.offsets, s, activation=act,
                act_grad_of=z if act else None,
            )  # fmt: skip
            if need[2] or need[3]:
                dw1, db1 = grouped_wgrad(
                    x, dz, plan.offsets, gather_idx=plan.sorted_token, with_bias=need[3]
                )
            if need[0]:
                dxs, _ = grouped_mm(dz, w1.transpose(1, 2), plan.offsets, s)  # (S, D)
                # undo the dispatch: each token sums its K rows, a gather in fixed order
                dx = combine(dxs, plan, expert_ids, None)  # (N, D)
        return dx, dw, dw1, db1, dw2, db2, None, None, None


def _check_inputs(x, expert_ids, weights, w1, b1, w2, b2) -> None:
    """The shared shape checks (biases optional), then the kernels' dtypes and device."""
    check_expert_ffn_shapes(x, expert_ids, weights, w1, b1, w2, b2, optional_biases=True)
    check_expert_ids(expert_ids, w1.shape[0])
    check_float(x=x, weights=weights, w1=w1, w2=w2)
    for name, t in (("w1", w1), ("w2", w2), ("b1", b1), ("b2", b2)):
        if t is not None and t.dtype != x.dtype:
            raise TypeError(f"{name} must have x's dtype {x.dtype}, got {t.dtype}")
    tensors = {"x": x, "expert_ids": expert_ids, "weights": weights, "w1": w1, "w2": w2}
    check_device(**tensors, **{k: v for k, v in (("b1", b1), ("b2", b2)) if v is not None})


def triton_expert_ffn(
    x: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor,
    w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor, b2: torch.Tensor | None,
    activation: str = "gelu", *, plan: DispatchPlan | None = None,
) -> torch.Tensor:  # fmt: skip
    """y[n] = sum_k weights[n, k] * FFN_{expert_ids[n, k]}(x[n]); ids of -1 contribute nothing.

    x (N, D), expert_ids (N, K) int64, weights (N, K), w1 (E, D, F), b1 (E, F), w2 (E, F, D),
    b2 (E, D) -> (N, D), as `unicl.moe.ops.expert_ffn`. Differentiable in x, weights and all
    expert parameters. `plan` (a `DispatchPlan`: `routing_plan`, or `remap` of the batch's
    `AttributePlan`) skips the routing sort; it must describe expert_ids. Expert ids are not
    range-checked (that would sync).
    """
    _check_inputs(x, expert_ids, weights, w1, b1, w2, b2)
    code = get_activation(activation).kernel_code
    num_experts = w1.shape[0]
    if plan is None:
        plan = routing_plan(expert_ids, num_experts)
    elif (plan.num_tokens, plan.top_k, plan.num_experts) != (*expert_ids.shape, num_experts):
        raise ValueError(
            f"plan is for (N, K, E) = {(plan.num_tokens, plan.top_k, plan.num_experts)}, "
            f"expert_ids/w1 give {(*expert_ids.shape, num_experts)}"
        )
    if x.shape[0] == 0:
        return x.new_zeros(x.shape)
    return _ExpertFFNFunction.apply(
        x.contiguous(), weights, w1, b1, w2, b2, expert_ids.contiguous(), plan, code
    )


class _Dispatch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, expert_ids, plan: DispatchPlan):
        ctx.plan = plan
        ctx.save_for_backward(expert_ids)
        return gather_rows(x, plan)

    @staticmethod
    def backward(ctx, dxs):
        (expert_ids,) = ctx.saved_tensors
        return combine(dxs.contiguous(), ctx.plan, expert_ids, None), None, None


class _Combine(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, weights, expert_ids, plan: DispatchPlan):
        ctx.plan = plan
        ctx.save_for_backward(y, weights, expert_ids)
        return combine(y, plan, expert_ids, weights)

    @staticmethod
    def backward(ctx, dout):
        y, weights, expert_ids = ctx.saved_tensors
        dy, dw = combine_backward(dout, y, ctx.plan, expert_ids, weights, ctx.needs_input_grad[1])
        return dy, dw, None, None


def dispatch(x: torch.Tensor, expert_ids: torch.Tensor, plan: DispatchPlan) -> torch.Tensor:
    """Differentiable gather (N, D) -> (S, D) in expert order; rows of dropped slots are zero
    in the gradient and unspecified in the output (no kernel reads them)."""
    return _Dispatch.apply(x, expert_ids, plan)


def weighted_combine(
    y: torch.Tensor, weights: torch.Tensor, expert_ids: torch.Tensor, plan: DispatchPlan
) -> torch.Tensor:
    """Differentiable combine (S, D) in plan order -> (N, D) with gate weights (N, K)."""
    return _Combine.apply(y, weights, expert_ids, plan)
