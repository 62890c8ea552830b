"""Row movement kernels (Triton): dispatch (gather) and the gate-weighted combine, with backward.

The paper's mixture of experts (arXiv 2312.02520). Both directions are gathers, never scatters with
atomics, so the results are deterministic and every output row is written exactly once:

    gather_rows       out[j] = src[sorted_token[j]]                    (dispatch; j < offsets[E])
    combine           out[n] = sum_k w[n, k] * y[slot_pos[n*K + k]]    (kept slots only)
    combine_backward  dy[slot_pos[s]] = w[s] * dout[s // K];  dw[s] = <dout[s // K], y[slot_pos[s]]>

Letters: N tokens, K choices, S = N*K slots, D width; BT tokens and BD columns per program.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from unicl.moe.kernels._common import check_device, check_float
from unicl.moe.plan import DispatchPlan


# src: (R, D); idx: (S,) int32; offsets: (E + 1,) int32 (offsets[E] = rows to copy); out: (S, D)
@triton.jit
def _gather_rows_kernel(
    src_ptr, idx_ptr, offsets_ptr, out_ptr, S, D, E, stride_src, BT: tl.constexpr, BD: tl.constexpr
):
    rows = tl.program_id(0) * BT + tl.arange(0, BT)  # (BT,)
    cols = tl.program_id(1) * BD + tl.arange(0, BD)  # (BD,)
    rows_ok = rows < tl.load(offsets_ptr + E)  # dropped slots sit past the kept ones
    src_row = tl.load(idx_ptr + rows, mask=rows_ok, other=0).to(tl.int64)
    mask = rows_ok[:, None] & (cols[None, :] < D)
    v = tl.load(src_ptr + src_row[:, None] * stride_src + cols[None, :], mask=mask)
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * D + cols[None, :], v, mask=mask)


# y: (S, D) plan order; slot_pos: (S,) int32; ids: (S,) expert ids (-1 dropped)
# w: (S,) gate weights (HAS_W); out: (N, D)
@triton.jit
def _combine_kernel(
    y_ptr, slot_pos_ptr, ids_ptr, w_ptr, out_ptr, N, K, D,
    HAS_W: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    tok = tl.program_id(0) * BT + tl.arange(0, BT)  # (BT,)
    cols = tl.program_id(1) * BD + tl.arange(0, BD)  # (BD,)
    tok_ok = tok < N
    col_ok = cols < D
    acc = tl.zeros((BT, BD), tl.float32)
    # a fixed k order per token: the sum is deterministic
    for k in range(0, K):
        slot = tok * K + k
        kept = tok_ok & (tl.load(ids_ptr + slot, mask=tok_ok, other=-1) >= 0)
        pos = tl.load(slot_pos_ptr + slot, mask=kept, other=0).to(tl.int64)
        v = tl.load(y_ptr + pos[:, None] * D + cols[None, :], mask=kept[:, None] & col_ok[None, :],
                    other=0.0).to(tl.float32)  # fmt: skip
        if HAS_W:
            v *= tl.load(w_ptr + slot, mask=kept, other=0.0).to(tl.float32)[:, None]
        acc += v
    out_off = tok.to(tl.int64)[:, None] * D + cols[None, :]
    tl.store(
        out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=tok_ok[:, None] & col_ok[None, :]
    )


# dout: (N, D); y: (S, D) plan order; slot_pos: (S,) int32; ids: (S,); w: (S,)
# dy: (S, D) out in plan order; dw: (S,) out (NEED_DW)
@triton.jit
def _combine_bwd_kernel(
    dout_ptr, y_ptr, slot_pos_ptr, ids_ptr, w_ptr, dy_ptr, dw_ptr, N, K, D,
    NEED_DW: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    tok = tl.program_id(0) * BT + tl.arange(0, BT)  # (BT,)
    tok_ok = tok < N
    for k in range(0, K):
        slot = tok * K + k
        kept = tok_ok & (tl.load(ids_ptr + slot, mask=tok_ok, other=-1) >= 0)
        pos = tl.load(slot_pos_ptr + slot, mask=kept, other=0).to(tl.int64)
        w = tl.load(w_ptr + slot, mask=kept, other=0.0).to(tl.float32)
        dot = tl.zeros((BT,), tl.float32)
        # the whole row is walked once per choice: dw needs a full-row dot product
        for d0 in range(0, D, BD):
            cols = d0 + tl.arange(0, BD)
            mask = kept[:, None] & (cols[None, :] < D)
            g = tl.load(dout_ptr + tok.to(tl.int64)[:, None] * D + cols[None, :], mask=mask,
                        other=0.0).to(tl.float32)  # fmt: skip
            tl.store(dy_ptr + pos[:, None] * D + cols[None, :],
                     (g * w[:, None]).to(dy_ptr.dtype.element_ty), mask=mask)  # fmt: skip
            if NEED_DW:
                v = tl.load(y_ptr + pos[:, None] * D + cols[None, :], mask=mask, other=0.0)
                dot += tl.sum(g * v.to(tl.float32), axis=1)
        if NEED_DW:
            tl.store(dw_ptr + slot, dot.to(dw_ptr.dtype.element_ty), mask=tok_ok)


def _row_block(d: int) -> tuple[int, int]:
    """(BT, BD): about 4K elements per program, whole rows where they fit."""
    bd = min(triton.next_power_of_2(max(d, 16)), 1024)
    return max(4096 // bd, 1), bd


def _check_plan_rows(plan: DispatchPlan, rows: int, what: str) -> None:
    if rows != plan.num_tokens * plan.top_k:
        raise ValueError(
            f"{what} must have S = N*K = {plan.num_tokens * plan.top_k} rows, got {rows}"
        )


def gather_rows(src: torch.Tensor, plan: DispatchPlan) -> torch.Tensor:
    """Dispatch: (N, D) -> (S, D) rows in expert-contiguous order (dropped rows unwritten)."""
    check_float(src=src)
    check_device(src=src, sorted_token=plan.sorted_token)
    if src.dim() != 2 or src.shape[0] != plan.num_tokens:
        raise ValueError(f"src must be (N={plan.num_tokens}, D), got {tuple(src.shape)}")
    src = src if src.stride(1) == 1 else src.contiguous()
    s, d = plan.num_tokens * plan.top_k, src.shape[1]
    out = torch.empty(s, d, dtype=src.dtype, device=src.device)  # (S, D)
    if s and d:
        bt, bd = _row_block(d)
        grid = (triton.cdiv(s, bt), triton.cdiv(d, bd))
        _gather_rows_kernel[grid](
            src, plan.sorted_token, plan.offsets, out, s, d, plan.num_experts, src.stride(0),
            BT=bt, BD=bd,
        )  # fmt: skip
    return out


def combine(
    y: torch.Tensor, plan: DispatchPlan, expert_ids: torch.Tensor, weights: torch.Tensor | None
) -> torch.Tensor:
    """(S, D) expert outputs in plan order -> (N, D) sum over each token's kept choices.

    weights: (N, K) gate weights, or None for a plain sum (the backward of the dispatch).
    """
    check_float(y=y)
    check_device(y=y, expert_ids=expert_ids, slot_pos=plan.slot_pos)
    _check_plan_rows(plan, y.shape[0], "y")
    n, k, d = plan.num_tokens, plan.top_k, y.shape[1]
    if weights is not None and weights.shape != (n, k):
        raise ValueError(f"weights must be (N, K) = ({n}, {k}), got {tuple(weights.shape)}")
    out = torch.empty(n, d, dtype=y.dtype, device=y.device)  # (N, D)
    if n == 0 or d == 0:
        return out
    y = y.contiguous()
    ids = expert_ids.reshape(-1).contiguous()  # (S,)
    w = weights.reshape(-1).contiguous() if weights is not None else y  # (S,)
    bt, bd = _row_block(d)
    grid = (triton.cdiv(n, bt), triton.cdiv(d, bd))
    _combine_kernel[grid](
        y, plan.slot_pos, ids, w, out, n, k, d, HAS_W=weights is not None, BT=bt, BD=bd
    )
    return out


def combine_backward(
    dout: torch.Tensor,
    y: torch.Tensor,
    plan: DispatchPlan,
    expert_ids: torch.Tensor,
    weights: torch.Tensor,
    need_dw: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of `combine`: dy (S, D) in plan order and dw (N, K) (zero for dropped slots)."""
    check_float(dout=dout, y=y, weights=weights)
    check_device(dout=dout, y=y, weights=weights, slot_pos=plan.slot_pos)
    _check_plan_rows(plan, y.shape[0], "y")
    n, k, d = plan.num_tokens, plan.top_k, y.shape[1]
    if dout.shape != (n, d):
        raise ValueError(f"dout must be (N, D) = ({n}, {d}), got {tuple(dout.shape)}")
    dy = torch.empty_like(y)  # (S, D)
    dw = torch.empty(n, k, dtype=weights.dtype, device=y.device) if need_dw else None  # (N, K)
    if n == 0:
        return dy, dw
    bt, bd = _row_block(d)
    bt = max(bt // 2, 1)  # this kernel walks whole rows: fewer tokens per program
    _combine_bwd_kernel[(triton.cdiv(n, bt),)](
        dout.contiguous(), y.contiguous(), plan.slot_pos, expert_ids.reshape(-1).contiguous(),
        weights.reshape(-1).contiguous(), dy, dw if dw is not None else dy, n, k, d,
        NEED_DW=need_dw, BT=bt, BD=bd,
    )  # fmt: skip
    return dy, dw
