"""Expert dispatch through PyTorch's grouped GEMM (`torch._grouped_mm`).

The rows are gathered into expert order once (`ops.gather`), each projection of all experts is
one grouped GEMM over the expert segments (CUTLASS on Hopper GPUs, bf16), and the gate-weighted
combine is `ops.combine`. Autograd comes from PyTorch's own derivative of the grouped GEMM, so
the backward is two grouped GEMMs per projection as well: no loop over experts on either side.

On CUDA the grouped GEMM takes bf16 only: fp32 inputs are computed in bf16 when autocast asks
for it and are otherwise refused (use the "reference" or "triton" backend for fp32 on GPUs).
On the CPU it accepts fp32 too, which is how the tests compare it with the reference ops.

Letters: N tokens, D width, F expert hidden width, E experts, K choices, M kept assignments.
"""

from __future__ import annotations

import torch

from unicl.moe.ops import RoutingPlan, _check_shapes, activation_fn, combine, gather, make_plan


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


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the grouped GEMM runs in for input `x` (autocast's on CUDA when enabled)."""
    if x.is_cuda and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return x.dtype


def _segment_bias(bias: torch.Tensor, plan: RoutingPlan, m: int) -> torch.Tensor:
    """(E, C) per-expert biases -> (M, C), one row per sorted assignment."""
    expert = torch.repeat_interleave(
        torch.arange(bias.shape[0], device=bias.device), plan.counts, output_size=m
    )  # (M,)
    return bias.index_select(0, expert)


def grouped_expert_ffn(
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
    """`unicl.moe.ops.expert_ffn` (same arguments and result) with grouped GEMMs."""
    _check_shapes(x, expert_ids, weights, w1, b1, w2, b2)
    act = activation_fn(activation)
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
    # under autocast the output is in the compute dtype, as for autocast's own matmuls
    xs, w1c, w2c = gather(x, plan).to(dtype), w1.to(dtype), w2.to(dtype)  # (M, D)
    ends = plan.offsets[1:].to(torch.int32)  # (E,) end row of each expert's segment
    h = torch._grouped_mm(xs, w1c, offs=ends) + _segment_bias(b1.to(dtype), plan, m)  # (M, F)
    ys = torch._grouped_mm(act(h), w2c, offs=ends) + _segment_bias(b2.to(dtype), plan, m)
    return combine(ys, plan, weights)  # (N, D)


__all__ = ["compute_dtype", "grouped_expert_ffn", "grouped_mm_available"]
