"""The compiled Triton dispatch kernels on CUDA against the reference ops, at larger shapes.

Same checks as test_kernels.py (which runs them in triton's CPU interpreter at small shapes):
outputs and every gradient, per-dtype tolerances, shapes that are not powers of two, top-1 and
top-2, skewed, empty, all-to-one and dropped routings, a single token, attribute plan reuse.
"""

from __future__ import annotations

import pytest
import torch

from unicl.moe import kernels, ops
from unicl.moe import plan as plan_mod

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not kernels.available(), reason="needs CUDA and triton"),
]
PARAMS = ("x", "weights", "w1", "b1", "w2", "b2")
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 1e-2}


def routing(kind: str, n: int, k: int, e: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "all_to_one":
        return torch.stack([torch.full((n,), (3 + j) % e) for j in range(k)], 1)
    scores = torch.rand(n, e, generator=gen)
    if kind == "zipf":
        scores = scores ** (torch.arange(e) + 1.0)
    if kind == "empty":
        scores[:, 1::2] = -1.0
    ids = scores.topk(k, dim=1).indices
    if kind == "dropped":
        ids[torch.rand(n, k, generator=gen) < 0.3] = -1
    return ids


def inputs(n, d, f, e, k, dtype, kind, seed):
    gen = torch.Generator().manual_seed(seed)
    ids = routing(kind, n, k, e, gen)
    w = torch.rand(n, k, generator=gen)
    base = {
        "x": torch.randn(n, d, generator=gen),
        "weights": w / w.sum(1, keepdim=True),
        "w1": torch.randn(e, d, f, generator=gen) / d**0.5,
        "b1": torch.randn(e, f, generator=gen) * 0.1,
        "w2": torch.randn(e, f, d, generator=gen) / f**0.5,
        "b2": torch.randn(e, d, generator=gen) * 0.1,
    }
    grad = torch.randn(n, d, generator=gen)
    return ids, {p: t.to(dtype) for p, t in base.items()}, grad


def forward_backward(fn, ids, tensors, grad, act, **kw):
    leaves = {p: t.detach().clone().requires_grad_() for p, t in tensors.items()}
    out = fn(leaves["x"], ids, *(leaves[p] for p in PARAMS[1:]), act, **kw)
    grads = torch.autograd.grad(out, [leaves[p] for p in PARAMS], grad.to(out))
    return out.detach(), dict(zip(PARAMS, grads))


def check(got, want, tol, what):
    scale = want.float().abs().max().clamp_min(1.0)
    err = (got.float() - want.float()).abs().max()
    assert err <= tol * scale, f"{what}: {err:.3g} > {tol} x {scale:.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "n,k,kind,act",
    [
        (1000, 1, "balanced", "gelu"),
        (1000, 2, "zipf", "gelu_tanh"),
        (777, 2, "all_to_one", "relu"),
        (901, 2, "empty", "gelu"),
        (901, 2, "dropped", "gelu"),
        (1, 2, "balanced", "gelu"),
    ],
)
def test_expert_ffn_cuda(dtype, n, k, kind, act):
    d, f, e = 200, 520, 8
    ids, tensors, grad = inputs(n, d, f, e, k, dtype, kind, seed=n + k)
    cuda = {p: t.cuda() for p, t in tensors.items()}
    out, grads = forward_backward(kernels.triton_expert_ffn, ids.cuda(), cuda, grad.cuda(), act)
    f32 = {p: t.double() for p, t in tensors.items()}
    want, want_grads = forward_backward(ops.expert_ffn, ids, f32, grad.double(), act)
    check(out.cpu(), want, TOL[dtype], "output")
    for p in PARAMS:
        check(grads[p].cpu(), want_grads[p], TOL[dtype], f"grad {p}")


@pytest.mark.parametrize("kind", ["balanced", "zipf", "all_to_one", "empty", "dropped"])
def test_routing_plan_cuda(kind):
    ids = routing(kind, 5003, 2, 16, torch.Generator().manual_seed(0)).cuda()
    got = kernels.routing_plan(ids, 16)
    want = plan_mod.torch_dispatch_plan(ids, 16)
    for field in ("offsets", "sorted_slot", "sorted_token", "slot_pos"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field


def test_attribute_plan_reuse_cuda():
    gen = torch.Generator().manual_seed(1)
    attributes = torch.randint(0, 40, (4099,), generator=gen).cuda()
    attr_experts = torch.rand(40, 8, generator=gen).topk(2, dim=1).indices.cuda()
    aplan = kernels.build_attribute_plan(attributes, 40)
    got = kernels.remap(aplan, attr_experts, 8)  # Triton on CUDA
    want = plan_mod.torch_remap(aplan, attr_experts, 8)
    for field in ("offsets", "sorted_slot", "sorted_token", "slot_pos"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field
    ids = attr_experts[attributes]
    _, tensors, grad = inputs(4099, 96, 160, 8, 2, torch.float32, "balanced", seed=2)
    cuda = {p: t.cuda() for p, t in tensors.items()}
    out, grads = forward_backward(
        kernels.triton_expert_ffn, ids, cuda, grad.cuda(), "gelu", plan=got
    )
    want_out, want_grads = forward_backward(
        kernels.triton_expert_ffn, ids, cuda, grad.cuda(), "gelu"
    )
    check(out, want_out, 1e-5, "output")
    for p in PARAMS:
        check(grads[p], want_grads[p], 1e-4, f"grad {p}")
