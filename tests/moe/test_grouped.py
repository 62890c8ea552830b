"""The grouped-GEMM dispatch (moe/grouped.py) against the reference ops, and the backend policy."""

from __future__ import annotations

import pytest
import torch

from unicl.moe import MoELayer
from unicl.moe.backends import choose_backend
from unicl.moe.grouped import grouped_expert_ffn, grouped_mm_available
from unicl.moe.ops import expert_ffn
from unicl.moe.plan import build_attribute_plan

needs_grouped_cpu = pytest.mark.skipif(
    not grouped_mm_available("cpu"), reason="this PyTorch has no torch._grouped_mm"
)


def case(n=37, d=16, f=24, e=5, k=2, seed=0, device="cpu", empty_expert=False, drop=False):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, e, generator=g)
    if empty_expert:
        logits[:, 2] = -1e9
    ids = logits.topk(k, dim=-1).indices
    if drop:
        ids[::4, -1] = -1
    tensors = [
        torch.randn(n, d, generator=g),
        torch.rand(n, k, generator=g),
        torch.randn(e, d, f, generator=g) * 0.3,
        torch.randn(e, f, generator=g) * 0.1,
        torch.randn(e, f, d, generator=g) * 0.3,
        torch.randn(e, d, generator=g) * 0.1,
    ]
    x, w, w1, b1, w2, b2 = [t.to(device).requires_grad_() for t in tensors]
    return x, ids.to(device), w, w1, b1, w2, b2


def run(fn, x, ids, w, w1, b1, w2, b2, **kw):
    out = fn(x, ids, w, w1, b1, w2, b2, "gelu_tanh", **kw)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    return out, torch.autograd.grad(out, [x, w, w1, b1, w2, b2], g)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@needs_grouped_cpu
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("variant", ["plain", "empty_expert", "drop"])
def test_grouped_matches_reference_on_cpu(k, variant):
    args = case(k=k, empty_expert=variant == "empty_expert", drop=variant == "drop")
    out, grads = run(grouped_expert_ffn, *args)
    ref_out, ref_grads = run(expert_ffn, *args)
    assert rel(out, ref_out) < 1e-5
    for name, a, b in zip(("x", "weights", "w1", "b1", "w2", "b2"), grads, ref_grads):
        assert rel(a, b) < 1e-5, name


@needs_grouped_cpu
def test_grouped_with_attribute_plan_equals_own_plan():
    n, e, k, a = 40, 6, 2, 4
    attrs = torch.randint(0, a, (n,), generator=torch.Generator().manual_seed(3))
    table = torch.rand(a, e, generator=torch.Generator().manual_seed(4)).topk(k, 1).indices
    x, _, w, w1, b1, w2, b2 = case(n=n, e=e, k=k)
    ids = table[attrs]
    plan = build_attribute_plan(attrs, a).remap(table, e).to_routing_plan()
    out, grads = run(grouped_expert_ffn, x, ids, w, w1, b1, w2, b2, plan=plan)
    own, own_grads = run(grouped_expert_ffn, x, ids, w, w1, b1, w2, b2)
    assert rel(out, own) < 1e-6
    for a_, b_ in zip(grads, own_grads):
        assert rel(a_, b_) < 1e-6


def test_backend_policy():
    bf16, fp32 = torch.bfloat16, torch.float32
    assert choose_backend("auto", "cpu", bf16, triton=True, grouped=True) == "reference"
    assert choose_backend("auto", "cuda", bf16, triton=True, grouped=True) == "grouped"
    assert choose_backend("auto", "cuda", fp32, triton=True, grouped=True) == "triton"
    assert choose_backend("auto", "cuda", bf16, triton=True, grouped=False) == "triton"
    assert choose_backend("auto", "cuda", fp32, triton=False, grouped=True) == "reference"
    assert choose_backend("reference", "cuda", bf16, triton=True, grouped=True) == "reference"


@needs_grouped_cpu
def test_layer_with_grouped_backend_matches_reference_layer():
    torch.manual_seed(0)
    layer = MoELayer(16, 32, 4, 2, router="topk", backend="grouped")
    ref = MoELayer(16, 32, 4, 2, router="topk", backend="reference")
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(3, 7, 16)
    y, aux = layer(x)
    y_ref, aux_ref = ref(x)
    assert rel(y, y_ref) < 1e-5 and torch.equal(aux, aux_ref)


@pytest.mark.gpu
@pytest.mark.skipif(not grouped_mm_available("cuda"), reason="needs a GPU with grouped GEMMs")
@pytest.mark.parametrize("autocast", [False, True])
def test_grouped_bf16_on_cuda_matches_fp32_reference(autocast):
    args = case(n=3000, d=256, f=512, e=8, k=2, device="cuda", empty_expert=True)
    ref_out, ref_grads = run(expert_ffn, *args)
    if autocast:
        with torch.autocast("cuda", torch.bfloat16):
            out, grads = run(grouped_expert_ffn, *args)
    else:
        low = [t.detach().bfloat16().requires_grad_() if t.is_floating_point() else t for t in args]
        out, grads = run(grouped_expert_ffn, *low)
    assert out.dtype == torch.bfloat16
    assert rel(out, ref_out) < 2e-2
    for name, a, b in zip(("x", "weights", "w1", "b1", "w2", "b2"), grads, ref_grads):
        assert rel(a, b) < 3e-2, name


@pytest.mark.gpu
@pytest.mark.skipif(not grouped_mm_available("cuda"), reason="needs a GPU with grouped GEMMs")
def test_grouped_refuses_fp32_on_cuda():
    args = case(device="cuda")
    with pytest.raises(TypeError, match="bf16"):
        grouped_expert_ffn(*args)


@pytest.mark.parametrize("backend", ["reference", "grouped"])
def test_layer_under_cpu_autocast(backend):
    """bf16 autocast: the experts run in bf16, gradients reach every parameter in fp32."""
    if backend == "grouped" and not grouped_mm_available("cpu"):
        pytest.skip("this PyTorch has no torch._grouped_mm")
    torch.manual_seed(0)
    layer = MoELayer(16, 32, 4, 2, router="topk", backend=backend)
    x = torch.randn(2, 5, 16, requires_grad=True)
    with torch.autocast("cpu", torch.bfloat16):
        y, _ = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    ref = MoELayer(16, 32, 4, 2, router="topk", backend="reference")
    ref.load_state_dict(layer.state_dict())
    y_ref, _ = ref(x.detach())
    assert rel(y.float(), y_ref) < 2e-2
    for p in (x, layer.w1, layer.b1, layer.w2, layer.b2):
        assert p.grad is not None and p.grad.dtype == torch.float32
        assert torch.isfinite(p.grad).all()
