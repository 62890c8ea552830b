"""unicl.moe: sparse mixture-of-experts for the decoder (arXiv 2312.02520, MoE).

Routers decide which experts each token uses (`router.py`), dispatch ops execute that decision
(`ops.py`, plain PyTorch; `kernels/`, Triton on CUDA), and `MoELayer` (`layer.py`) puts them
together as a drop-in replacement for a transformer block's FFN.
"""

from unicl.moe.layer import BACKENDS, MoELayer, MoEOutput
from unicl.moe.ops import RoutingPlan, expert_ffn, make_plan
from unicl.moe.router import ROUTERS, AttributeRouter, RouterOutput, TopKRouter, build_router

__all__ = [
    "BACKENDS",
    "ROUTERS",
    "AttributeRouter",
    "MoELayer",
    "MoEOutput",
    "RouterOutput",
    "RoutingPlan",
    "TopKRouter",
    "build_router",
    "expert_ffn",
    "make_plan",
]
