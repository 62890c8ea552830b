"""Grouped GEMMs over variable-length expert segments (Triton), forward and weight-gradient.

Mixture of experts (arXiv 2312.02520): after the plan sorts the slots by expert, expert e owns rows
[offsets[e], offsets[e+1]) and every expert's matmul runs in ONE launch, with no padding to a
capacity. The tile schedule is computed on the device inside each program: from the (E + 1,)
offsets it derives each expert's number of BM-row tiles, their prefix sum, and so which (expert,
row tile) the program's id names. The grid is launched at its upper bound cdiv(S, BM) + E, known
without a sync; programs past the real tile count exit at once.

    grouped_mm       C[r] = epilogue(A[row(r)] @ B[e(r)] + bias[e(r)])     (rows r of the plan)
                     row(r) = sorted_token[r] (fused gather from x) or r; the epilogue stores the
                     pre-activation and applies act (forward), or multiplies by act'(G[r])
                     (backward through the activation)
    grouped_wgrad    dB[e] = act?(A[rows of e])^T @ G[rows of e];  dbias[e] = sum of G's rows

Letters: S rows (slots), E experts, Kd reduction width, Nd output width.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from unicl.moe.kernels._common import check_device, check_float, dot_in_fp32, dot_precision


@triton.jit
def _act(z, ACT: tl.constexpr):
    """The expert nonlinearity (`Activation.kernel_code`, unicl.moe.activations) on an fp32 tile."""
    if ACT == 1:  # exact GELU
        z = 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))
    elif ACT == 2:  # tanh GELU (GPT-2); tanh(u) = 2 sigmoid(2u) - 1
        u = 0.7978845608028654 * (z + 0.044715 * z * z * z)
        z = z * tl.sigmoid(2.0 * u)
    elif ACT == 3:
        z = tl.maximum(z, 0.0)
    return z


@triton.jit
def _act_grad(z, ACT: tl.constexpr):
    """d act / dz at the fp32 pre-activation tile z."""
    if ACT == 1:
        cdf = 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476))
        g = cdf + z * 0.3989422804014327 * tl.exp(-0.5 * z * z)
    elif ACT == 2:
        u = 0.7978845608028654 * (z + 0.044715 * z * z * z)
        t = 2.0 * tl.sigmoid(2.0 * u) - 1.0
        du = 0.7978845608028654 * (1.0 + 0.134145 * z * z)
        g = 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * du
    else:
        g = (z > 0.0).to(tl.float32)
    return g


@triton.jit
def _tile_of(offsets_ptr, tile, E, BM: tl.constexpr, EP: tl.constexpr):
    """(expert, first row, end row) of row tile `tile`; expert = -1 past the last tile."""
    e = tl.arange(0, EP)
    start = tl.load(offsets_ptr + e, mask=e < E, other=0)  # (EP,)
    end = tl.load(offsets_ptr + e + 1, mask=e < E, other=0)  # (EP,)
    tiles = (end - start + BM - 1) // BM  # (EP,) row tiles per expert
    last = tl.cumsum(tiles, axis=0)  # (EP,) inclusive prefix
    expert = tl.sum((last <= tile).to(tl.int32), axis=0)  # experts wholly before this tile
    mine = e == expert
    first_tile = tl.sum(tl.where(mine, last - tiles, 0), axis=0)
    row0 = tl.sum(tl.where(mine, start, 0), axis=0) + (tile - first_tile) * BM
    row_end = tl.sum(tl.where(mine, end, 0), axis=0)
    expert = tl.where(tile < tl.sum(tiles, axis=0), expert, -1)
    return expert, row0, row_end


# a: (Ra, Kd) rows gathered through idx (GATHER) or (S, Kd); idx: (S,) int32 sorted_token
# b: (E, Kd, Nd) any strides; bias: (E, Nd); offsets: (E + 1,) int32
# c: (S, Nd) out; z: (S, Nd) pre-activation out (STORE_Z); g: (S, Nd) pre-activation in (ACT_GRAD)
@triton.jit
def _grouped_mm_kernel(
    a_ptr, idx_ptr, b_ptr, bias_ptr, c_ptr, z_ptr, g_ptr, offsets_ptr,
    E, Kd, Nd, stride_am, stride_ak, stride_be, stride_bk, stride_bn,
    GATHER: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, STORE_Z: tl.constexpr,
    ACT_GRAD: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, EP: tl.constexpr,
):  # fmt: skip
    expert, row0, row_end = _tile_of(offsets_ptr, tl.program_id(0), E, BM, EP)
    if expert < 0:
        return
    rm = row0 + tl.arange(0, BM)  # (BM,) sorted rows
    rn = tl.program_id(1) * BN + tl.arange(0, BN)  # (BN,) output columns
    rk = tl.arange(0, BK)
    row_ok = rm < row_end
    if GATHER:
        # dispatch fused into the GEMM: read token rows of x directly
        arow = tl.load(idx_ptr + rm, mask=row_ok, other=0).to(tl.int64)
    else:
        arow = rm.to(tl.int64)
    a_ptrs = a_ptr + arow[:, None] * stride_am + rk[None, :] * stride_ak  # (BM, BK)
    b_ptrs = (
        b_ptr + expert.to(tl.int64) * stride_be + rk[:, None] * stride_bk + rn[None, :] * stride_bn
    )
    acc = tl.zeros((BM, BN), tl.float32)
    for k0 in range(0, Kd, BK):
        k_ok = (k0 + rk) < Kd
        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)  # (BM, BK)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & (rn[None, :] < Nd), other=0.0)  # (BK, BN)
        if DOT_F32:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PREC)
        a_ptrs += BK * stride_ak
        b_ptrs += BK * stride_bk
    if HAS_BIAS:
        acc += tl.load(bias_ptr + expert * Nd + rn, mask=rn < Nd, other=0.0).to(tl.float32)[None, :]
    out_off = rm.to(tl.int64)[:, None] * Nd + rn[None, :]  # (BM, BN) into (S, Nd)
    out_ok = row_ok[:, None] & (rn[None, :] < Nd)
    if ACT_GRAD:
        # backward through the activation: dZ = dH * act'(Z)
        zpre = tl.load(g_ptr + out_off, mask=out_ok, other=0.0).to(tl.float32)
        acc = acc * _act_grad(zpre, ACT)
    elif ACT != 0:
        if STORE_Z:
            tl.store(z_ptr + out_off, acc.to(z_ptr.dtype.element_ty), mask=out_ok)
        acc = _act(acc, ACT)
    tl.store(c_ptr + out_off, acc.to(c_ptr.dtype.element_ty), mask=out_ok)


# a: (Ra, Ka) rows through idx (GATHER) or (S, Ka); idx: (S,) int32; g: (S, Nd)
# offsets: (E + 1,) int32; dw: (E, Ka, Nd) out; db: (E, Nd) out (HAS_DB)
@triton.jit
def _grouped_wgrad_kernel(
    a_ptr, idx_ptr, g_ptr, dw_ptr, db_ptr, offsets_ptr, Ka, Nd, stride_am,
    GATHER: tl.constexpr, ACT: tl.constexpr, HAS_DB: tl.constexpr, DOT_F32: tl.constexpr,
    PREC: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    expert = tl.program_id(0)
    tiles_n = tl.cdiv(Nd, BN)
    pid_m = tl.program_id(1) // tiles_n
    pid_n = tl.program_id(1) % tiles_n
    rm = pid_m * BM + tl.arange(0, BM)  # (BM,) rows of dW (A's columns)
    rn = pid_n * BN + tl.arange(0, BN)  # (BN,) columns of dW
    rk = tl.arange(0, BK)  # the reduction runs over the expert's rows
    start = tl.load(offsets_ptr + expert)
    end = tl.load(offsets_ptr + expert + 1)
    acc = tl.zeros((BM, BN), tl.float32)
    bias_acc = tl.zeros((BN,), tl.float32)
    for r0 in range(start, end, BK):
        r = r0 + rk  # (BK,)
        r_ok = r < end
        if GATHER:
            arow = tl.load(idx_ptr + r, mask=r_ok, other=0).to(tl.int64)
        else:
            arow = r.to(tl.int64)
        at = tl.load(a_ptr + arow[None, :] * stride_am + rm[:, None],
                     mask=(rm[:, None] < Ka) & r_ok[None, :], other=0.0)  # fmt: skip
        if ACT != 0:
            # recompute act(Z) from the saved pre-activation instead of storing it
            at = _act(at.to(tl.float32), ACT).to(a_ptr.dtype.element_ty)
        g = tl.load(g_ptr + r.to(tl.int64)[:, None] * Nd + rn[None, :],
                    mask=r_ok[:, None] & (rn[None, :] < Nd), other=0.0)  # fmt: skip
        if HAS_DB:
            bias_acc += tl.sum(g.to(tl.float32), axis=0)
        if DOT_F32:
            at = at.to(tl.float32)
            g = g.to(tl.float32)
        acc = tl.dot(at, g, acc, input_precision=PREC)  # (BM, BK) @ (BK, BN)
    dw_off = expert.to(tl.int64) * Ka * Nd + rm[:, None] * Nd + rn[None, :]
    tl.store(dw_ptr + dw_off, acc.to(dw_ptr.dtype.element_ty),
             mask=(rm[:, None] < Ka) & (rn[None, :] < Nd))  # fmt: skip
    if HAS_DB:
        if pid_m == 0:  # one row of tiles owns the bias gradient
            tl.store(db_ptr + expert * Nd + rn, bias_acc.to(db_ptr.dtype.element_ty), mask=rn < Nd)


def _mm_config(dtype: torch.dtype) -> dict:
    """Tile sizes: 128x128 output tiles, a deeper K step for 16-bit inputs."""
    bk = 32 if dtype == torch.float32 else 64
    return {"BM": 128, "BN": 128, "BK": bk, "num_warps": 8, "num_stages": 3}


def grouped_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    offsets: torch.Tensor,
    num_rows: int,
    *,
    bias: torch.Tensor | None = None,
    gather_idx: torch.Tensor | None = None,
    activation: int = 0,
    store_pre: bool = False,
    act_grad_of: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """C (S, Nd) = epilogue(A[rows] @ B[e] + bias[e]) per expert segment; returns (C, Z or None).

    a: (Ra, Kd) read through gather_idx (S,) int32 when given, else (S, Kd) in plan order;
    b: (E, Kd, Nd) any strides (a transposed view is fine); bias: (E, Nd) or None;
    offsets: (E + 1,) int32; num_rows: S. activation: `Activation.kernel_code` (0: none); with
    act_grad_of (S, Nd) the epilogue multiplies by act'(act_grad_of) instead of applying act.
    Rows past offsets[E] (dropped slots) are left unwritten.
    """
    check_float(a=a, b=b)
    check_device(a=a, b=b, offsets=offsets)
    if a.dim() != 2 or b.dim() != 3 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"a (R, Kd) and b (E, Kd, Nd) must agree, got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    if a.dtype != b.dtype:
        raise TypeError(f"a and b must share a dtype, got {a.dtype} and {b.dtype}")
    e, kd, nd = b.shape
    if offsets.shape != (e + 1,) or offsets.dtype != torch.int32:
        raise ValueError(
            f"offsets must be (E + 1,) = ({e + 1},) int32, "
            f"got {tuple(offsets.shape)} {offsets.dtype}"
        )
    if bias is not None and bias.shape != (e, nd):
        raise ValueError(f"bias must be (E, Nd) = ({e}, {nd}), got {tuple(bias.shape)}")
    if gather_idx is None and a.shape[0] != num_rows:
        raise ValueError(f"a must have S={num_rows} rows without gather_idx, got {a.shape[0]}")
    c = torch.empty(num_rows, nd, dtype=a.dtype, device=a.device)  # (S, Nd)
    z = torch.empty_like(c) if store_pre and activation else None  # (S, Nd)
    if act_grad_of is not None and act_grad_of.shape != c.shape:
        raise ValueError(f"act_grad_of must be {tuple(c.shape)}, got {tuple(act_grad_of.shape)}")
    if num_rows == 0 or nd == 0:
        return c, z
    if kd == 0:
        raise ValueError("the reduction width Kd must be > 0")
    a = a if a.stride(1) == 1 else a.contiguous()
    cfg = _mm_config(a.dtype)
    grid = (triton.cdiv(num_rows, cfg["BM"]) + e, triton.cdiv(nd, cfg["BN"]))
    dummy = c  # never read when the matching flag is off
    _grouped_mm_kernel[grid](
        a, gather_idx if gather_idx is not None else offsets, b,
        bias if bias is not None else dummy, c, z if z is not None else dummy,
        act_grad_of if act_grad_of is not None else dummy, offsets,
        e, kd, nd, a.stride(0), a.stride(1), b.stride(0), b.stride(1), b.stride(2),
        GATHER=gather_idx is not None, HAS_BIAS=bias is not None, ACT=activation,
        STORE_Z=z is not None, ACT_GRAD=act_grad_of is not None, DOT_F32=dot_in_fp32(a.dtype),
        PREC=dot_precision(a.dtype), EP=triton.next_power_of_2(e + 1), **cfg,
    )  # fmt: skip
    return c, z


def grouped_wgrad(
    a: torch.Tensor,
    g: torch.Tensor,
    offsets: torch.Tensor,
    *,
    gather_idx: torch.Tensor | None = None,
    activation: int = 0,
    with_bias: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """dW (E, Ka, Nd) = act(A[rows of e])^T @ G[rows of e], db (E, Nd) = column sums of G.

    a: (Ra, Ka) through gather_idx (S,) int32, or (S, Ka); g: (S, Nd) in plan order;
    offsets: (E + 1,) int32. Experts with no rows get zero gradients.
    """
    check_float(a=a, g=g)
    check_device(a=a, g=g, offsets=offsets)
    if a.dim() != 2 or g.dim() != 2:
        raise ValueError(f"a and g must be 2-D, got {tuple(a.shape)} and {tuple(g.shape)}")
    e = offsets.numel() - 1
    ka, nd = a.shape[1], g.shape[1]
    dw = torch.empty(e, ka, nd, dtype=a.dtype, device=a.device)  # (E, Ka, Nd)
    db = torch.empty(e, nd, dtype=a.dtype, device=a.device) if with_bias else None  # (E, Nd)
    if ka == 0 or nd == 0 or e == 0:
        return dw.zero_(), db.zero_() if db is not None else None
    a = a if a.stride(1) == 1 else a.contiguous()
    g = g.contiguous()
    cfg = _mm_config(a.dtype)
    grid = (e, triton.cdiv(ka, cfg["BM"]) * triton.cdiv(nd, cfg["BN"]))
    _grouped_wgrad_kernel[grid](
        a, gather_idx if gather_idx is not None else offsets, g, dw,
        db if db is not None else dw, offsets, ka, nd, a.stride(0),
        GATHER=gather_idx is not None, ACT=activation, HAS_DB=with_bias,
        DOT_F32=dot_in_fp32(a.dtype), PREC=dot_precision(a.dtype), **cfg,
    )  # fmt: skip
    return dw, db
