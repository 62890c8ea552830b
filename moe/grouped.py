"""Expert dispatch through PyTorch's grouped GEMM (`torch._grouped_mm`).

The rows are gathered into expert order once (`ops.gather`, then into 16-row aligned expert
segments), each projection of all experts is one grouped GEMM over the segments (CUTLASS on
Hopper GPUs, bf16), and the gate-weighted combine is `ops.combine`. Autograd comes from
PyTorch's own derivative of the grouped GEMM, so the backward is two grouped GEMMs per
projection as well: no loop over experts on either side. Bias gradients are segment sums taken
as a (E, M) one-hot matmul, which accumulates in fp32 even for bf16 inputs.

On CUDA the grouped GEMM takes bf16 only: fp32 inputs are computed in bf16 when autocast asks
for it and are otherwise refused (use the "reference" or "triton" backend for fp32 on GPUs).
On the CPU it accepts fp32 too, which is how the tests compare it with the reference ops.

Letters: N tokens, D width, F expert hidden width, E experts, K choices, M kept assignments.
"""

from __future__ import annotations

import torch

from unicl.moe.activations import get_activation
from unicl.moe.inputs import check_expert_ffn_shapes, compute_dtype
from unicl.moe.ops import combine, gather
from unicl.moe.plan import RoutingPlan, make_plan


def grouped_mm_available(device: torch.device | str = "cuda") -> bool:
    """Whether this PyTorch has the grouped GEMM for `device` (CUDA: compute capability >= 9)."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    device = torch.device(device)
    if device.type == "cpu":
        return True
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= (9, 0)


#: every expert's segment is padded to a multiple of this many rows, and to at least this many:
#: the grouped GEMM's kernels want 16-row aligned group offsets, and an empty group would leave
#: that expert's weight gradient unwritten
ALIGN = 16


def _padded_layout(plan: RoutingPlan, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Row of each sorted assignment in the padded layout, expert of each padded row, group ends.

    Returns (rows (M,) int64, expert (M_pad,) int64, ends (E,) int32). Host-side sizes come from
    `plan.counts_list`, so this adds no device sync.
    """
    counts = plan.counts_list
    padded = [max(ALIGN, -(-c // ALIGN) * ALIGN) for c in counts]  # (E,) host ints
    e = len(counts)
    padded_t = torch.tensor(padded, device=device)  # (E,)
    pad_starts = torch.cumsum(padded_t, 0) - padded_t  # (E,)
    expert_of_sorted = torch.repeat_interleave(
        torch.arange(e, device=device), plan.counts, output_size=plan.slots.shape[0]
    )  # (M,)
    shift = (pad_starts - plan.offsets[:-1])[expert_of_sorted]  # (M,)
    rows = torch.arange(plan.slots.shape[0], device=device) + shift  # (M,)
    expert = torch.repeat_interleave(
        torch.arange(e, device=device), padded_t, output_size=sum(padded)
    )  # (M_pad,)
    return rows, expert, torch.cumsum(padded_t, 0).to(torch.int32)


class _ExpandBias(torch.autograd.Function):
    """(E, C) biases -> (R, C) rows `bias[expert]`; the backward sums rows per expert by matmul."""

    @staticmethod
    def forward(ctx, bias: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(expert)
        ctx.num_experts = bias.shape[0]
        return bias.index_select(0, expert)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (expert,) = ctx.saved_tensors
        onehot = grad.new_zeros(ctx.num_experts, expert.shape[0])  # (E, R)
        onehot.scatter_(0, expert[None], 1.0)
        return onehot @ grad, None  # (E, C)


def grouped_expert_ffn(
    x: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor,
    w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
    activation: str = "gelu", *, plan: RoutingPlan | None = None,
) -> torch.Tensor:  # fmt: skip
    """`unicl.moe.ops.expert_ffn` (same arguments and result) with grouped GEMMs."""
    check_expert_ffn_shapes(x, expert_ids, weights, w1, b1, w2, b2)
    act = get_activation(activation)
    dtype = compute_dtype(x)
    if x.is_cuda and dtype != torch.bfloat16:
        raise TypeError(
            f"the grouped GEMM runs in bf16 on CUDA, got {dtype}: enable bf16 autocast, cast the "
            "inputs, or use backend='reference' / 'triton'"
        )
    if plan is None:
        plan = make_plan(expert_ids, w1.shape[0])
    m = plan.slots.shape[0]
    if x.shape[0] == 0 or m == 0:
        return x.new_zeros(x.shape)
    rows, expert, ends = _padded_layout(plan, x.device)
    # under autocast the output is in the compute dtype, as for autocast's own matmuls
    xs = gather(x, plan).to(dtype)  # (M, D)
    xs = xs.new_zeros(expert.shape[0], xs.shape[1]).index_copy(0, rows, xs)  # (M_pad, D)
    h = torch._grouped_mm(xs, w1.to(dtype), offs=ends) + _ExpandBias.apply(b1.to(dtype), expert)
    ys = torch._grouped_mm(act(h), w2.to(dtype), offs=ends)  # (M_pad, D)
    ys = ys.index_select(0, rows) + _ExpandBias.apply(b2.to(dtype), expert.index_select(0, rows))
    return combine(ys, plan, weights)  # (N, D)


__all__ = ["grouped_expert_ffn", "grouped_mm_available"]
