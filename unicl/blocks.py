"""The decoder's transformer block: causal self-attention (with its key/value cache) and a
dense GPT-2 FFN or a mixture of experts, pre-LN (unicl/model.py stacks them).

Letters: B batch, T new tokens, S keys (cached + new), D width, H heads, Dh = D / H.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from unicl.moe.activations import get_activation
from unicl.moe.layer import MoELayer

if TYPE_CHECKING:
    from unicl.kv_cache import KVCache
    from unicl.model import ModelConfig


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x, mask, cache: KVCache | None, layer: int) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)  # 3 x (B, T, D)
        # (B, T, D) -> (B, H, T, Dh)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        if cache is not None:
            # write the new keys after the cached ones and attend over all of them
            end = cache.length + t
            cache.keys[layer][:, :, cache.length : end] = k
            cache.values[layer][:, :, cache.length : end] = v
            k = cache.keys[layer][:, :, :end]  # (B, H, S, Dh)
            v = cache.values[layer][:, :, :end]
        p = self.dropout if self.training else 0.0
        if mask is None and cache is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(b, t, d)  # (B, T, D)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    """The dense GPT-2 FFN."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff)
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model)
        self.act = get_activation(cfg.activation)  # the one table the experts use too
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(self.act(self.fc(x))))  # (B, T, D) through (B, T, F)


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + ffn(ln(x)) (dense or MoE)."""

    def __init__(self, cfg: ModelConfig, moe: bool, num_attributes: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.is_moe = moe
        if moe:
            out_std = 0.02 / math.sqrt(2 * cfg.n_layer)
            self.moe = MoELayer(
                cfg.d_model,
                cfg.d_ff,
                cfg.num_experts,
                cfg.top_k,
                router=cfg.router,
                backend=cfg.moe_backend,
                num_attributes=num_attributes,
                capacity_factor=cfg.capacity_factor,
                noise=cfg.router_noise,
                activation=cfg.activation,
                router_dim=cfg.router_dim,
                init_std=0.02,
                out_init_std=out_std,
            )
            self.moe_drop = nn.Dropout(cfg.dropout)
        else:
            self.mlp = MLP(cfg)

    def forward(self, x, attributes, mask, cache, layer, attribute_plan=None):
        x = x + self.attn(self.ln_1(x), mask, cache, layer)  # (B, T, D)
        if not self.is_moe:
            return x + self.mlp(self.ln_2(x)), None
        out = self.moe.route_and_run(self.ln_2(x), attributes, attribute_plan)
        return x + self.moe_drop(out.y), out
