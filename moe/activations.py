"""The expert FFN's nonlinearities by name: the one table every backend and the model read.

Mixture of experts (arXiv 2312.02520): expert e computes act(v @ w1[e] + b1[e]) @ w2[e] + b2[e].
Each `Activation` says how PyTorch computes `act` (as a function, into a buffer, and its backward
in place, for the fused CPU path of `ops.py`) and which branch code the Triton kernels take
(`kernels/_gemm.py`, `_act` / `_act_grad`; code 0 there means "no activation").
"""

from __future__ import annotations

from types import MappingProxyType
from typing import NamedTuple

import torch
import torch.nn.functional as F


class Activation(NamedTuple):
    """One expert nonlinearity."""

    name: str
    #: `approximate` of F.gelu ("none": exact, "tanh": GPT-2's), None for ReLU
    gelu_approximate: str | None
    #: branch code of the Triton kernels (1, 2, 3; 0 is reserved for "no activation")
    kernel_code: int

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """act(h), differentiable by ordinary autograd."""
        if self.gelu_approximate is None:
            return F.relu(h)
        return F.gelu(h, approximate=self.gelu_approximate)

    def into(self, h: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out = act(h), written into an existing buffer."""
        if self.gelu_approximate is None:
            return torch.clamp(h, min=0, out=out)
        return torch.ops.aten.gelu.out(h, approximate=self.gelu_approximate, out=out)

    def backward_(self, grad: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """grad <- d act(h)/dh * grad, in place (h is the pre-activation)."""
        if self.gelu_approximate is None:
            return grad.mul_(h > 0)
        return torch.ops.aten.gelu_backward.grad_input(
            grad, h, approximate=self.gelu_approximate, grad_input=grad
        )


_BY_NAME = MappingProxyType(
    {
        act.name: act
        for act in (
            Activation("gelu", "none", 1),
            Activation("gelu_tanh", "tanh", 2),  # GPT-2's tanh approximation of GELU
            Activation("relu", None, 3),
        )
    }
)

#: the valid activation names, in the order error messages list them
ACTIVATIONS = tuple(_BY_NAME)


def get_activation(name: str) -> Activation:
    """The expert nonlinearity called `name`; a ValueError lists the valid names."""
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}") from None


__all__ = ["ACTIVATIONS", "Activation", "get_activation"]
