"""unicl.moe: sparse mixture-of-experts for the decoder (arXiv 2312.02520, MoE).

In dependency order (a module imports only modules listed before it):
  - `activations.py`, `inputs.py`: the expert FFN's nonlinearities and argument checks;
  - `plan.py`: routing plans, the (token, expert) assignments grouped by expert;
  - `router.py`: which experts each token uses;
  - the dispatch backends, which execute a routing decision: `ops.py` (plain PyTorch),
    `grouped.py` (PyTorch's grouped GEMM), `kernels/` (Triton on CUDA);
  - `backends.py`: the registry of those backends by name, and the "auto" policy;
  - `layer.py`: `MoELayer`, router + experts + backend, a drop-in replacement for a
    transformer block's FFN.
"""

from unicl.moe.backends import BACKENDS
from unicl.moe.layer import MoELayer, MoEOutput
from unicl.moe.ops import expert_ffn
from unicl.moe.plan import RoutingPlan, make_plan
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
