"""Routers: which K of E experts each token uses, with what weights (arXiv 2312.02520, MoE).

Two policies:
  - "topk": GShard gating on the hidden state. logits = x @ W_g; optional Gaussian noise on the
    logits in training; top-k of the softmax; weights renormalised over the chosen k when k >= 2
    (k = 1 keeps the raw probability, as Switch/DeepSpeed do, so the gate gets a gradient).
  - "attribute": AG-MoE (Uni-Perceiver-MoE). The gate never sees the hidden state, only the
    token's attribute id: logits = Linear(LayerNorm(Linear(embed(attribute)))); Gaussian noise of
    std 1/E in training; top-k; weights renormalised. Routing depends only on the attribute, so it
    is computed once per distinct attribute in the batch and gathered per token.

Both return a `RouterOutput` and share the auxiliary load-balancing loss of GShard,
    l_aux = E * sum_e(mean_prob_e * frac_top1_e),
over the tokens (mean_prob_e = mean softmax probability of expert e, frac_top1_e = fraction of
tokens whose first choice is e), and the optional capacity limit below.

Capacity (`capacity_factor` c, None = dropless): each expert takes at most
    capacity = max(ceil(K * N / E * c), min_capacity)
assignments. Assignments are admitted by choice rank, then token order: every token's first
choice before any second choice (DeepSpeed's top1gating/top2gating without random token
selection). A dropped assignment gets expert id -1 and weight 0; with k >= 2 the surviving weights
of a token are renormalised over its kept choices (a token that lost all choices passes through the
layer's residual only).

Letters: N tokens, D width, E experts, K choices per token, U distinct attributes, A attributes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

ROUTERS = ("attribute", "topk")


class RouterOutput(NamedTuple):
    """A routing decision for N tokens."""

    #: (N, K) int64 chosen experts, -1 where the capacity limit dropped the assignment
    expert_ids: torch.Tensor
    #: (N, K) gate weights (0 where dropped), differentiable w.r.t. the router's parameters
    weights: torch.Tensor
    #: scalar GShard load-balancing loss E * sum_e(mean_prob_e * frac_top1_e)
    aux_loss: torch.Tensor
    #: (E,) int64 kept assignments per expert
    expert_load: torch.Tensor
    #: scalar int64 number of assignments dropped by the capacity limit
    dropped: torch.Tensor
    #: (A, K) int64 experts of each attribute id (attribute router without a capacity limit,
    #: else None): rows of attributes absent from the batch are 0 and never read
    attribute_experts: torch.Tensor | None = None


def gshard_aux_loss(probs: torch.Tensor, top1: torch.Tensor, counts=None) -> torch.Tensor:
    """E * sum_e(mean_prob_e * frac_top1_e).

    probs (R, E) softmax rows, top1 (R,) first choices; `counts` (R,) optionally says how many
    tokens each row stands for (the attribute router's rows are distinct attributes).
    """
    num_experts = probs.shape[1]
    if counts is None:
        mean_prob = probs.mean(0)  # (E,)
        frac = torch.bincount(top1, minlength=num_experts).to(probs.dtype) / top1.shape[0]
    else:
        total = counts.sum().to(probs.dtype)
        c = counts.to(probs.dtype)
        mean_prob = (probs * c[:, None]).sum(0) / total  # (E,)
        frac = torch.zeros(num_experts, dtype=probs.dtype, device=probs.device)
        frac = frac.index_add(0, top1, c) / total  # (E,)
    return num_experts * (mean_prob * frac).sum()


def expert_capacity(num_tokens: int, num_experts: int, top_k: int, factor: float, minimum: int):
    """Assignments one expert may take: max(ceil(K * N / E * factor), minimum)."""
    return max(math.ceil(top_k * num_tokens / num_experts * factor), minimum)


def apply_capacity(
    expert_ids: torch.Tensor, weights: torch.Tensor, num_experts: int, capacity: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop assignments beyond `capacity` per expert (first choices first, then token order).

    expert_ids (N, K), weights (N, K) -> (ids with -1 where dropped, renormalised weights).
    """
    n, k = expert_ids.shape
    # rank order: all first choices in token order, then all second choices, ...
    by_rank = expert_ids.t().reshape(-1)  # (K*N,)
    one_hot = F.one_hot(by_rank, num_experts)  # (K*N, E)
    position = (one_hot.cumsum(0) * one_hot).sum(1) - 1  # (K*N,) place in its expert's queue
    keep = (position < capacity).view(k, n).t()  # (N, K)
    ids = torch.where(keep, expert_ids, torch.full_like(expert_ids, -1))
    kept_w = weights * keep.to(weights.dtype)
    if k >= 2:
        denom = kept_w.sum(1, keepdim=True).clamp_min(torch.finfo(weights.dtype).eps)
        kept_w = kept_w / denom
    return ids, kept_w


def _select(
    logits: torch.Tensor, top_k: int, renormalise: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """softmax -> top-k: (probs (R, E), ids (R, K), weights (R, K))."""
    probs = torch.softmax(logits.float(), dim=-1)  # (R, E) routing math in fp32
    weights, ids = probs.topk(top_k, dim=-1)  # (R, K)
    if renormalise and top_k >= 2:
        weights = weights / weights.sum(-1, keepdim=True)
    return probs, ids, weights


class _Router(nn.Module):
    """Shared checks, noise, capacity and load statistics of both policies."""

    def __init__(
        self,
        num_experts: int,
        top_k: int,
        capacity_factor: float | None,
        noise: float,
        min_capacity: int,
    ):
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must lie in [1, num_experts={num_experts}], got {top_k}")
        if capacity_factor is not None and capacity_factor <= 0:
            raise ValueError(f"capacity_factor must be > 0 or None, got {capacity_factor}")
        if noise < 0:
            raise ValueError(f"router noise std must be >= 0, got {noise}")
        self.num_experts = num_experts
        self.top_k = top_k
        self.capacity_factor = capacity_factor
        self.noise = noise
        self.min_capacity = min_capacity

    def _noisy(self, logits: torch.Tensor) -> torch.Tensor:
        if self.training and self.noise > 0:
            return logits + torch.randn_like(logits) * self.noise
        return logits

    def _finish(self, ids, weights, aux, num_tokens: int) -> RouterOutput:
        dropped = torch.zeros((), dtype=torch.int64, device=ids.device)
        if self.capacity_factor is not None:
            cap = expert_capacity(
                num_tokens, self.num_experts, self.top_k, self.capacity_factor, self.min_capacity
            )
            ids, weights = apply_capacity(ids, weights, self.num_experts, cap)
            dropped = (ids < 0).sum()
        kept = ids.reshape(-1)
        load = torch.bincount(kept[kept >= 0], minlength=self.num_experts)  # (E,)
        return RouterOutput(ids, weights, aux, load, dropped)

    def extra_repr(self) -> str:
        return (
            f"experts={self.num_experts}, top_k={self.top_k}, "
            f"capacity_factor={self.capacity_factor}, noise={self.noise}"
        )


class TopKRouter(_Router):
    """GShard gate on the hidden state: x (N, D) -> RouterOutput."""

    def __init__(
        self,
        d_model: int,
        num_experts: int,
        top_k: int = 2,
        capacity_factor: float | None = None,
        noise: float = 0.0,
        min_capacity: int = 4,
    ):
        super().__init__(num_experts, top_k, capacity_factor, noise, min_capacity)
        self.gate = nn.Linear(d_model, num_experts, bias=False)

    def route_logits(self, logits: torch.Tensor) -> RouterOutput:
        """Routing from given gate logits (N, E); used by forward and by the parity tests."""
        probs, ids, weights = _select(self._noisy(logits), self.top_k, renormalise=True)
        aux = gshard_aux_loss(probs, ids[:, 0])
        return self._finish(ids, weights, aux, logits.shape[0])

    def forward(self, x: torch.Tensor, attributes: torch.Tensor | None = None) -> RouterOutput:
        if x.dim() != 2 or x.shape[1] != self.gate.in_features:
            raise ValueError(
                f"router input must be (N, {self.gate.in_features}), got {tuple(x.shape)}"
            )
        return self.route_logits(self.gate(x))  # (N, E)


class AttributeRouter(_Router):
    """AG-MoE gate on the attribute id only: attributes (N,) -> RouterOutput."""

    def __init__(
        self,
        num_attributes: int,
        num_experts: int,
        top_k: int = 2,
        dim: int = 256,
        capacity_factor: float | None = None,
        noise: float | None = None,
        min_capacity: int = 4,
        ln_eps: float = 1e-5,
    ):
        # the paper's training noise: std 1/E
        noise = 1.0 / num_experts if noise is None else noise
        super().__init__(num_experts, top_k, capacity_factor, noise, min_capacity)
        if num_attributes < 1:
            raise ValueError(f"num_attributes must be >= 1, got {num_attributes}")
        self.num_attributes = num_attributes
        self.embed = nn.Embedding(num_attributes, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=ln_eps)
        self.gate = nn.Linear(dim, num_experts)

    def attribute_logits(self, attribute_ids: torch.Tensor) -> torch.Tensor:
        """Gate logits of the given attribute ids: (U,) -> (U, E)."""
        return self.gate(self.norm(self.proj(self.embed(attribute_ids))))

    def forward(self, x: torch.Tensor | None, attributes: torch.Tensor) -> RouterOutput:
        if attributes.dim() != 1:
            raise ValueError(f"attributes must be (N,), got shape {tuple(attributes.shape)}")
        if attributes.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"attributes must be an integer tensor, got {attributes.dtype}")
        if x is not None and x.shape[0] != attributes.shape[0]:
            raise ValueError(
                f"attributes (N={attributes.shape[0]}) and x (N={x.shape[0]}) disagree in N"
            )
        n = attributes.shape[0]
        uniq, inverse, counts = torch.unique(
            attributes.long(), return_inverse=True, return_counts=True
        )  # (U,), (N,), (U,)
        if n and (int(uniq[0]) < 0 or int(uniq[-1]) >= self.num_attributes):
            raise ValueError(
                f"attribute ids must lie in [0, {self.num_attributes}), "
                f"got [{int(uniq[0])}, {int(uniq[-1])}]"
            )
        # one gate evaluation (and one noise draw) per distinct attribute, shared by its tokens
        logits = self._noisy(self.attribute_logits(uniq))  # (U, E)
        probs, ids_u, weights_u = _select(logits, self.top_k, renormalise=True)
        aux = gshard_aux_loss(probs, ids_u[:, 0], counts)
        ids = ids_u.index_select(0, inverse)  # (N, K)
        weights = weights_u.index_select(0, inverse)  # (N, K)
        out = self._finish(ids, weights, aux, n)
        if self.capacity_factor is not None:
            return out  # dropping depends on token order: no per-attribute table
        table = ids_u.new_zeros(self.num_attributes, self.top_k)  # (A, K)
        table[uniq] = ids_u
        return out._replace(attribute_experts=table)


def build_router(
    kind: str,
    *,
    d_model: int,
    num_experts: int,
    top_k: int,
    num_attributes: int | None = None,
    capacity_factor: float | None = None,
    noise: float | None = None,
    min_capacity: int = 4,
    router_dim: int | None = None,
) -> _Router:
    """A router by policy name ("attribute" or "topk")."""
    if kind == "topk":
        return TopKRouter(d_model, num_experts, top_k, capacity_factor, noise or 0.0, min_capacity)
    if kind == "attribute":
        if num_attributes is None:
            raise ValueError("router='attribute' needs num_attributes (distinct attribute ids)")
        return AttributeRouter(
            num_attributes,
            num_experts,
            top_k,
            router_dim or d_model,
            capacity_factor,
            noise,
            min_capacity,
        )
    raise ValueError(f"router must be one of {ROUTERS}, got {kind!r}")
