"""The sparse MoE FFN layer: router + stacked experts + dispatch (arXiv 2312.02520, MoE).

A drop-in replacement for a transformer block's FFN. `forward(x, attributes)` returns
`(y, aux_loss)`; `route_and_run` returns the same plus the router's decision (load statistics).

Backends for the dispatch step (the routing is the same for all):
  - "reference": `unicl.moe.ops.expert_ffn`, plain PyTorch (the CPU path and the test oracle);
  - "triton": `unicl.moe.kernels.triton_expert_ffn` (same signature; CUDA);
  - "grouped": `unicl.moe.grouped.grouped_expert_ffn`, PyTorch's grouped GEMM (bf16 on Hopper);
  - "auto": decided per call by `choose_backend` from the input's device and compute dtype, so a
    layer built on CPU and moved to a GPU picks a GPU path: reference on the CPU; on CUDA the
    grouped GEMM for bf16 work on GPUs that have it, else Triton when it imports, else reference
    (measurements behind this order: docs/BENCHMARKS.md, "MoE layer and expert dispatch").

Letters: N tokens, D width, F expert hidden width, E experts, K choices per token.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import nn

from unicl.moe.grouped import compute_dtype, grouped_expert_ffn, grouped_mm_available
from unicl.moe.kernels.plan import AttributePlan
from unicl.moe.ops import activation_fn, expert_ffn
from unicl.moe.router import RouterOutput, build_router

BACKENDS = ("auto", "reference", "triton", "grouped")


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


@functools.lru_cache(maxsize=8)
def _grouped_available(device: torch.device) -> bool:
    return grouped_mm_available(device)


@functools.lru_cache(maxsize=1)
def _triton_kernel():
    """The Triton dispatch op, or None when the kernels cannot be imported here."""
    try:
        from unicl.moe.kernels import triton_expert_ffn
    except ImportError:
        return None
    return triton_expert_ffn


class MoEOutput(NamedTuple):
    #: (..., D) layer output
    y: torch.Tensor
    #: scalar load-balancing loss of this layer
    aux_loss: torch.Tensor
    #: the routing decision that produced y
    router: RouterOutput


class MoELayer(nn.Module):
    """Top-k routed mixture of E two-layer FFN experts with stacked weights."""

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        num_experts: int,
        top_k: int = 2,
        router: str = "attribute",
        backend: str = "auto",
        num_attributes: int | None = None,
        capacity_factor: float | None = None,
        noise: float | None = None,
        min_capacity: int = 4,
        activation: str = "gelu",
        router_dim: int | None = None,
        init_std: float = 0.02,
        out_init_std: float | None = None,
    ):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if d_model < 1 or d_ff < 1:
            raise ValueError(f"d_model and d_ff must be >= 1, got {d_model}, {d_ff}")
        activation_fn(activation)  # validates the name
        self.d_model, self.d_ff = d_model, d_ff
        self.num_experts, self.top_k = num_experts, top_k
        self.backend = backend
        self.activation = activation
        self.router_kind = router
        self.router = build_router(
            router,
            d_model=d_model,
            num_experts=num_experts,
            top_k=top_k,
            num_attributes=num_attributes,
            capacity_factor=capacity_factor,
            noise=noise,
            min_capacity=min_capacity,
            router_dim=router_dim,
        )
        # experts as stacked weights: expert e computes act(v @ w1[e] + b1[e]) @ w2[e] + b2[e]
        out_std = init_std if out_init_std is None else out_init_std
        self.w1 = nn.Parameter(torch.randn(num_experts, d_model, d_ff) * init_std)  # (E, D, F)
        self.b1 = nn.Parameter(torch.zeros(num_experts, d_ff))  # (E, F)
        self.w2 = nn.Parameter(torch.randn(num_experts, d_ff, d_model) * out_std)  # (E, F, D)
        self.b2 = nn.Parameter(torch.zeros(num_experts, d_model))  # (E, D)

    def dispatch_fn(self, x: torch.Tensor):
        """The dispatch op this call uses for input `x` (see the module docstring)."""
        kernel = _triton_kernel() if x.is_cuda or self.backend == "triton" else None
        backend = choose_backend(
            self.backend,
            x.device.type,
            compute_dtype(x),
            triton=kernel is not None,
            grouped=x.is_cuda and _grouped_available(x.device),
        )
        if backend == "reference":
            return expert_ffn
        if backend == "grouped":
            return grouped_expert_ffn
        if kernel is None:
            raise RuntimeError(
                "backend='triton' but unicl.moe.kernels cannot be imported "
                "(install the 'kernels' extra: triton)"
            )
        return kernel

    def route_and_run(
        self,
        x: torch.Tensor,
        attributes: torch.Tensor | None,
        attribute_plan: AttributePlan | None = None,
    ) -> MoEOutput:
        """x (..., D), attributes (...) int -> MoEOutput(y (..., D), aux_loss, router).

        `attribute_plan` (`build_attribute_plan(attributes.reshape(-1), A)`, made once per batch
        by the decoder and shared by its MoE layers) lets the attribute router's decision become
        an expert-contiguous token order by permuting attribute blocks instead of sorting the
        N * K assignments again in every layer.
        """
        if x.shape[-1] != self.d_model:
            raise ValueError(f"x must end in d_model={self.d_model}, got {tuple(x.shape)}")
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.d_model)  # (N, D)
        attrs = None
        if attributes is not None:
            if tuple(attributes.shape) != tuple(lead):
                raise ValueError(
                    f"attributes must have shape {tuple(lead)} (x without its last dim), "
                    f"got {tuple(attributes.shape)}"
                )
            attrs = attributes.reshape(-1)  # (N,)
        elif self.router_kind == "attribute":
            raise ValueError("the attribute router needs `attributes` (one id per token)")
        routing = self.router(flat, attrs)
        dispatch = self.dispatch_fn(flat)
        plan = None
        if attribute_plan is not None and routing.attribute_experts is not None:
            plan = attribute_plan.remap(routing.attribute_experts, self.num_experts)
            if dispatch is not _triton_kernel():
                plan = plan.to_routing_plan()  # the PyTorch paths' form of the same order
        dtype = compute_dtype(flat)
        params = (self.w1, self.b1, self.w2, self.b2)
        if dtype != flat.dtype and dispatch is not grouped_expert_ffn:
            # autocast: the custom autograd ops run in its dtype with autocast off inside them
            # (left on, their fused matmuls would write low-precision results into fp32 buffers)
            flat, params = flat.to(dtype), tuple(p.to(dtype) for p in params)
            with torch.autocast(flat.device.type, enabled=False):
                y = dispatch(
                    flat, routing.expert_ids, routing.weights.to(dtype), *params,
                    activation=self.activation, plan=plan,
                )  # fmt: skip
        else:
            y = dispatch(
                flat, routing.expert_ids, routing.weights.to(flat.dtype), *params,
                activation=self.activation, plan=plan,
            )  # fmt: skip
        return MoEOutput(y.view(*lead, self.d_model), routing.aux_loss, routing)

    def forward(
        self,
        x: torch.Tensor,
        attributes: torch.Tensor | None = None,
        attribute_plan: AttributePlan | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (..., D), attributes (...) -> (y (..., D), aux_loss scalar)."""
        out = self.route_and_run(x, attributes, attribute_plan)
        return out.y, out.aux_loss

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_ff={self.d_ff}, experts={self.num_experts}, "
            f"top_k={self.top_k}, backend={self.backend}, activation={self.activation}"
        )


def dense_equivalent_d_ff(layer: MoELayer) -> int:
    """Hidden width of the dense FFN with the same active FLOPs per token: K * d_ff."""
    return layer.top_k * layer.d_ff


__all__ = ["BACKENDS", "MoELayer", "MoEOutput", "choose_backend", "dense_equivalent_d_ff"]
