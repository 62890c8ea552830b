"""The expert FFN's inputs as every backend takes them: argument checks and the compute dtype.

Mixture of experts (arXiv 2312.02520). Every dispatch backend (`ops.py`, `grouped.py`,
`kernels/`) implements

    expert_ffn(x, expert_ids, weights, w1, b1, w2, b2, activation="gelu", *, plan=None) -> (N, D)

and checks its arguments here, so that all of them refuse the same bad input with the same
message. The checks never read tensor values (that would sync with the device) except
`check_expert_range`, which only the PyTorch paths call.

Letters: N tokens, K choices per token, E experts, D model width, F expert hidden width.
"""

from __future__ import annotations

import torch


def _dtype_names(dtypes: tuple[torch.dtype, ...]) -> str:
    return " or ".join(str(d).removeprefix("torch.") for d in dtypes)


def check_expert_ids(
    expert_ids: torch.Tensor,
    num_experts: int,
    dtypes: tuple[torch.dtype, ...] = (torch.int64, torch.int32),
) -> None:
    """(N, K) expert ids of one of `dtypes`, E >= 1, fewer than 2**31 slots (int32 plans)."""
    if not isinstance(expert_ids, torch.Tensor) or expert_ids.dim() != 2:
        raise ValueError(
            f"expert_ids must be an (N, K) tensor, got {getattr(expert_ids, 'shape', expert_ids)}"
        )
    if expert_ids.dtype not in dtypes:
        raise TypeError(f"expert_ids must be {_dtype_names(dtypes)}, got {expert_ids.dtype}")
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts}")
    if expert_ids.numel() >= 2**31:
        raise ValueError(f"expert_ids has {expert_ids.numel()} slots; at most 2**31 - 1 supported")


def check_expert_range(expert_ids: torch.Tensor, num_experts: int) -> None:
    """Every id lies in [-1, E) (-1 = dropped). Reads the ids back: syncs on a GPU."""
    if expert_ids.numel():
        lo, hi = int(expert_ids.min()), int(expert_ids.max())
        if lo < -1 or hi >= num_experts:
            raise ValueError(
                f"expert_ids must lie in [-1, {num_experts}) (-1 = dropped), got [{lo}, {hi}]"
            )


def check_expert_ffn_shapes(
    x, expert_ids, weights, w1, b1, w2, b2, *, optional_biases: bool = False
) -> None:
    """Shapes of x (N, D), expert_ids (N, K), weights (N, K), w1 (E, D, F), b1 (E, F),
    w2 (E, F, D), b2 (E, D); b1 / b2 may be None when `optional_biases`."""
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
        if tensor is None and optional_biases and name != "w2":
            continue
        got = None if tensor is None else tuple(tensor.shape)
        if got != shape:
            raise ValueError(f"{name} must have shape {shape}, got {got}")


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype expert matmuls run in for input `x`: autocast's for x's device when enabled."""
    kind = x.device.type
    if kind in ("cuda", "cpu") and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


__all__ = [
    "check_expert_ffn_shapes",
    "check_expert_ids",
    "check_expert_range",
    "compute_dtype",
]
