"""unicl.moe: sparse mixture-of-experts for the decoder (PAPER.md "Mixture of experts").

Routers decide which experts each token uses (`router.py`), dispatch ops execute that decision
(`ops.py`, plain PyTorch; `kernels/`, Triton on CUDA), and `MoELayer` (`layer.py`) puts them
together as a drop-in replacement for a transformer block's FFN.
"""

from unicl.moe.ops import RoutingPlan, expert_ffn, make_plan

__all__ = ["RoutingPlan", "expert_ffn", "make_plan"]
