"""Shared helpers of the Triton launchers: device/dtype checks and the interpreter switch.

Imported only by the other private kernel modules (it imports triton).
"""

from __future__ import annotations

import torch
import triton

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def interpreting() -> bool:
    """True when triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return bool(triton.knobs.runtime.interpret)


def check_device(**tensors: torch.Tensor) -> None:
    """Every tensor must be on one CUDA device (any device under the interpreter)."""
    devices = {t.device for t in tensors.values()}
    if len(devices) > 1:
        where = ", ".join(f"{name} on {t.device}" for name, t in tensors.items())
        raise ValueError(f"all tensors must be on one device, got {where}")
    device = devices.pop()
    if device.type != "cuda" and not interpreting():
        names = ", ".join(tensors)
        raise ValueError(f"{names} must be CUDA tensors for the Triton kernels, got {device}")


def check_float(**tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be float32, bfloat16 or float16, got {t.dtype}")


def dot_in_fp32(dtype: torch.dtype) -> bool:
    """Whether tl.dot must see fp32 operands.

    The triton 3.x interpreter computes bf16 x bf16 dots wrongly (numpy has no bf16), so under
    the interpreter bf16 tiles are upcast before the dot; on a GPU they stay bf16 (tensor cores,
    fp32 accumulation either way).
    """
    return dtype == torch.bfloat16 and interpreting()


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision: fp32 matmuls follow PyTorch's TF32 switch (off by default),
    so the kernels agree with `torch.matmul` on the same inputs; 16-bit inputs keep the default."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"
