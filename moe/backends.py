"""Expert-dispatch backends by name: the registry behind `MoELayer(backend=...)`.

Mixture of experts (arXiv 2312.02520). A backend runs the experts' FFNs for a routing decision
that has already been made. The registered backends:
  - "reference": `unicl.moe.ops.expert_ffn`, plain PyTorch (the CPU path and the test oracle);
  - "triton": `unicl.moe.kernels.triton_expert_ffn`, Triton kernels on CUDA;
  - "grouped": `unicl.moe.grouped.grouped_expert_ffn`, PyTorch's grouped GEMM (bf16 on Hopper).
"auto" is not a backend but a policy, decided per call by `choose_backend` from the input's
device and compute dtype, so that a layer built on CPU and moved to a GPU picks a GPU path:
reference on the CPU; on CUDA the grouped GEMM for bf16 work on GPUs that have it, else Triton
when it can run, else reference (measurements behind this order: docs/BENCHMARKS.md, "MoE layer
and expert dispatch").

Plugin contract, one `Backend` record per name:
  run(x, expert_ids, weights, w1, b1, w2, b2, activation, *, plan=None) -> (N, D)
      the arguments, result and gradients of `unicl.moe.ops.expert_ffn` (unicl.moe.inputs);
  available(device) -> bool
      whether "auto" may pick it for tensors on `device` (a backend named explicitly runs as
      asked, and its op reports what it cannot do);
  remap(attribute_plan, attr_experts (A, K), num_experts) -> plan
      the batch's `AttributePlan` turned into the plan type `run` takes as `plan=`;
  casts_itself
      True when `run` computes in autocast's dtype by itself; otherwise the layer casts the
      inputs to that dtype and calls `run` with autocast off.

Letters: A attributes, K choices per token.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import MappingProxyType
from typing import NamedTuple

import torch

import unicl.moe.kernels as kernels
from unicl.moe.grouped import grouped_expert_ffn, grouped_mm_available
from unicl.moe.inputs import compute_dtype
from unicl.moe.ops import expert_ffn
from unicl.moe.plan import AttributePlan, DispatchPlan, RoutingPlan


class Backend(NamedTuple):
    """One way to run the expert FFNs (the contract: see the module docstring)."""

    name: str
    run: Callable[..., torch.Tensor]
    available: Callable[[torch.device], bool]
    remap: Callable[[AttributePlan, torch.Tensor, int], RoutingPlan | DispatchPlan]
    casts_itself: bool


def _anywhere(device: torch.device) -> bool:
    return True


def _triton_available(device: torch.device) -> bool:
    return device.type == "cuda" and kernels.available()


@functools.lru_cache(maxsize=8)
def _grouped_available(device: torch.device) -> bool:
    return grouped_mm_available(device)


def _remap_for_pytorch(plan: AttributePlan, attr_experts: torch.Tensor, e: int) -> RoutingPlan:
    """The attribute plan as the PyTorch backends' `RoutingPlan` (the same order; syncs).

    The remap itself runs as the Triton kernel on CUDA when it can (one launch, the same plan).
    """
    return kernels.remap(plan, attr_experts, e).to_routing_plan()


REGISTRY = MappingProxyType(
    {
        b.name: b
        for b in (
            Backend("reference", expert_ffn, _anywhere, _remap_for_pytorch, False),
            Backend("triton", kernels.triton_expert_ffn, _triton_available, kernels.remap, False),
            Backend("grouped", grouped_expert_ffn, _grouped_available, _remap_for_pytorch, True),
        )
    }
)

#: the names `MoELayer(backend=...)` and `ModelConfig.moe_backend` accept
BACKENDS = ("auto", *REGISTRY)


def choose_backend(
    requested: str, device_type: str, dtype: torch.dtype, *, triton: bool, grouped: bool
) -> str:
    """The backend a call runs: `requested` unless it is "auto" (see the module docstring).

    `triton` / `grouped`: whether those paths can run on this device.
    """
    if requested != "auto":
        return requested
    if device_type != "cuda":
        return "reference"
    if grouped and dtype == torch.bfloat16:
        return "grouped"
    return "triton" if triton else "reference"


def check_backend_name(name: str) -> None:
    """A ValueError listing the valid names unless `name` is one of BACKENDS."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


def select_backend(requested: str, x: torch.Tensor) -> Backend:
    """The backend that runs `requested` (a name of BACKENDS) for input `x`."""
    check_backend_name(requested)
    if requested == "triton" and not kernels.importable():
        raise ImportError(
            "backend='triton' but triton cannot be imported (install the 'kernels' extra: "
            "pip install 'unicl[kernels]')"
        )
    if requested != "auto":
        return REGISTRY[requested]
    name = choose_backend(
        requested,
        x.device.type,
        compute_dtype(x),
        triton=REGISTRY["triton"].available(x.device),
        grouped=REGISTRY["grouped"].available(x.device),
    )
    return REGISTRY[name]


__all__ = [
    "BACKENDS",
    "REGISTRY",
    "Backend",
    "check_backend_name",
    "choose_backend",
    "select_backend",
]
