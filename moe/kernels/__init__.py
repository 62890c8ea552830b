"""unicl.moe.kernels: the Triton expert-dispatch backend (arXiv 2312.02520, mixture of experts).

Kernel stack (docs/kernels.md): private `@triton.jit` kernels in `_triton_plan.py` (routing plan),
`_rows.py` (dispatch/combine) and `_gemm.py` (grouped GEMMs) -> their launchers -> the autograd
Functions of `expert_ffn.py` -> `MoELayer(backend="triton")` through `unicl.moe.backends`. Only
this package imports triton, and only lazily: `import unicl.moe` and this package work without
it; the functions below import the kernel modules when first called. The routing plans the
kernels read are plain PyTorch (`unicl.moe.plan`); their names are re-exported here.
"""

from __future__ import annotations

import functools

import torch

from unicl.moe.plan import (
    AttributePlan,
    DispatchPlan,
    build_attribute_plan,
    torch_dispatch_plan,
    torch_remap,
)


@functools.cache
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def importable() -> bool:
    """Whether triton imports here (the kernels need it; CUDA is another matter)."""
    return _triton_importable()


def available() -> bool:
    """Whether the Triton path can run here: a CUDA device is present and triton imports."""
    return torch.cuda.is_available() and _triton_importable()


def triton_expert_ffn(
    x: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor,
    w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor, b2: torch.Tensor | None,
    activation: str = "gelu", *, plan: DispatchPlan | None = None,
) -> torch.Tensor:  # fmt: skip
    """`unicl.moe.ops.expert_ffn` on the Triton kernels (CUDA tensors); see expert_ffn.py."""
    from unicl.moe.kernels.expert_ffn import triton_expert_ffn as impl

    return impl(x, expert_ids, weights, w1, b1, w2, b2, activation, plan=plan)


def routing_plan(expert_ids: torch.Tensor, num_experts: int) -> DispatchPlan:
    """Device-side `DispatchPlan` of (N, K) expert ids: Triton kernels, no host sync."""
    from unicl.moe.kernels._triton_plan import routing_plan as impl

    return impl(expert_ids, num_experts)


def remap(plan: AttributePlan, attr_experts: torch.Tensor, num_experts: int) -> DispatchPlan:
    """`plan.remap(attr_experts, num_experts)`, as one Triton kernel on CUDA when it can run.

    The same `DispatchPlan` either way (the tests compare them element by element).
    """
    if attr_experts.is_cuda and available():
        from unicl.moe.kernels._triton_plan import triton_remap

        return triton_remap(plan, attr_experts, num_experts)
    return plan.remap(attr_experts, num_experts)


__all__ = [
    "importable",
    "AttributePlan",
    "DispatchPlan",
    "available",
    "build_attribute_plan",
    "remap",
    "routing_plan",
    "torch_dispatch_plan",
    "torch_remap",
    "triton_expert_ffn",
]
