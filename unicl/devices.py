"""Where a model runs: the device and dtype a user asks for, and CPU threads for decoding."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def cpu_threads(n: int | None):
    """Run a block with `n` torch intra-op threads (None: unchanged), then restore.

    Generation on CPU is a long series of tiny matmuls (one token per step); on a
    busy machine, several OpenMP threads per matmul wait on each other far longer
    than the matmul takes (docs/BENCHMARKS.md "Inference API": one thread was ~10x
    faster on 2 loaded cores), so the demo evaluates with one thread.
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def pick_device(device: str | torch.device | None) -> torch.device:
    """`device=` as a torch device this machine has; default CUDA when available, else CPU.

    An unknown name, or CUDA / MPS where there is none, is a ValueError naming the
    argument and the devices there are.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(
            f"device: expected a device name such as 'cpu' or 'cuda:0', or a torch.device, "
            f"got {device!r}"
        )
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    valid = ["cpu", *(["cuda"] if cuda else []), *(f"cuda:{i}" for i in range(cuda))]
    valid += ["mps"] if mps else []
    there = f"devices here: {', '.join(valid)}"
    try:
        parsed = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device: {device!r} is not a device name; {there}") from err
    if parsed.type == "cuda" and not cuda:
        raise ValueError(f"device: {device!r} needs CUDA, but CUDA is not available here; {there}")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= cuda:
        raise ValueError(f"device: {device!r} does not exist ({cuda} CUDA devices); {there}")
    if parsed.type == "mps" and not mps:
        raise ValueError(f"device: {device!r} needs Apple's MPS, which this machine lacks; {there}")
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device: {device!r} is not supported; {there}")
    return parsed


def pick_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """`dtype=` as the parameters' floating dtype; default float32.

    Names as torch spells them ("bfloat16", "torch.float16", "half"); anything else,
    an integer dtype included, is an error naming the argument and the valid names.
    """
    names = {
        "float32": torch.float32,
        "float": torch.float32,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
        "half": torch.float16,
        "float64": torch.float64,
        "double": torch.float64,
    }
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) and dtype in names.values():
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in names:
        return names[dtype.removeprefix("torch.")]
    valid = f"valid: {', '.join(names)} (as names or torch dtypes)"
    if not isinstance(dtype, (str, torch.dtype)):
        raise TypeError(f"dtype: expected a dtype name or a torch.dtype, got {dtype!r}; {valid}")
    raise ValueError(f"dtype: {dtype!r} is not a parameter dtype; {valid}")
