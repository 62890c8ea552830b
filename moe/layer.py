"""The sparse MoE FFN layer: router + stacked experts + dispatch (arXiv 2312.02520, MoE).

A drop-in replacement for a transformer block's FFN. `forward(x, attributes)` returns
`(y, aux_loss)`; `route_and_run` returns the same plus the router's decision (load statistics).
The routing is the same for every backend; the dispatch step runs on the backend named by
`backend=` ("auto", "reference", "triton", "grouped": see `unicl.moe.backends`).

Letters: N tokens, D width, F expert hidden width, E experts, K choices per token.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
from torch import nn

from unicl.moe.activations import get_activation
from unicl.moe.backends import Backend, check_backend_name, select_backend
from unicl.moe.inputs import compute_dtype
from unicl.moe.plan import AttributePlan, DispatchPlan, RoutingPlan
from unicl.moe.router import RouterOutput, build_router


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
        check_backend_name(backend)
        if d_model < 1 or d_ff < 1:
            raise ValueError(f"d_model and d_ff must be >= 1, got {d_model}, {d_ff}")
        get_activation(activation)  # validates the name
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
        """The dispatch op this call uses for input `x` (see `unicl.moe.backends`)."""
        return select_backend(self.backend, x).run

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
        backend = select_backend(self.backend, flat)
        plan = None
        if attribute_plan is not None and routing.attribute_experts is not None:
            # the batch's token grouping, in the plan type this backend's op takes
            plan = backend.remap(attribute_plan, routing.attribute_experts, self.num_experts)
        y = self._run(backend, flat, routing, plan)  # (N, D)
        return MoEOutput(y.view(*lead, self.d_model), routing.aux_loss, routing)

    def _run(
        self,
        backend: Backend,
        flat: torch.Tensor,
        routing: RouterOutput,
        plan: RoutingPlan | DispatchPlan | None,
    ) -> torch.Tensor:
        """The experts on flat (N, D) through `backend`, in autocast's dtype when it is on."""
        params = (self.w1, self.b1, self.w2, self.b2)
        dtype = compute_dtype(flat)
        no_autocast = contextlib.nullcontext()
        if dtype != flat.dtype and not backend.casts_itself:
            # autocast: the custom autograd ops run in its dtype with autocast off inside them
            # (left on, their fused matmuls would write low-precision results into fp32 buffers)
            flat, params = flat.to(dtype), tuple(p.to(dtype) for p in params)
            no_autocast = torch.autocast(flat.device.type, enabled=False)
        with no_autocast:
            return backend.run(
                flat, routing.expert_ids, routing.weights.to(flat.dtype), *params,
                activation=self.activation, plan=plan,
            )  # fmt: skip

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


__all__ = ["MoELayer", "MoEOutput", "dense_equivalent_d_ff"]
