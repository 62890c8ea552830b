"""MoELayer (moe/layer.py): output and gradients vs a naive per-token loop, backends, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unicl.moe.layer import MoELayer, dense_equivalent_d_ff


def naive_layer(layer: MoELayer, x, attributes):
    """Route with the layer's own router, then run every (token, choice) one at a time."""
    routing = layer.router(x, attributes)
    rows = []
    for n in range(x.shape[0]):
        acc = torch.zeros_like(x[n])
        for k in range(layer.top_k):
            e = int(routing.expert_ids[n, k])
            if e < 0:
                continue
            h = F.gelu(x[n] @ layer.w1[e] + layer.b1[e])
            acc = acc + routing.weights[n, k] * (h @ layer.w2[e] + layer.b2[e])
        rows.append(acc)
    return torch.stack(rows), routing.aux_loss


@pytest.mark.parametrize(
    "router,capacity", [("attribute", None), ("topk", None), ("topk", 0.6), ("attribute", 0.8)]
)
def test_layer_matches_naive_loop(router, capacity):
    torch.manual_seed(0)
    layer = MoELayer(
        d_model=12,
        d_ff=18,
        num_experts=5,
        top_k=2,
        router=router,
        backend="reference",
        num_attributes=6,
        capacity_factor=capacity,
        init_std=0.3,
    ).double()
    layer.eval()  # no routing noise: both paths see the same decision
    x = torch.randn(2, 21, 12, dtype=torch.float64, requires_grad=True)
    attrs = torch.randint(0, 6, (2, 21))
    y, aux = layer(x, attrs)
    assert y.shape == x.shape and aux.dim() == 0
    ref_y, ref_aux = naive_layer(layer, x.view(-1, 12), attrs.view(-1))
    torch.testing.assert_close(y.view(-1, 12), ref_y)
    torch.testing.assert_close(aux, ref_aux)
    g = torch.randn_like(y)
    params = [x, *layer.parameters()]
    got = torch.autograd.grad((y * g).sum() + aux, params, allow_unused=True)
    want = torch.autograd.grad((ref_y * g.view(-1, 12)).sum() + ref_aux, params, allow_unused=True)
    for (name, _), a, b in zip([("x", x), *layer.named_parameters()], got, want):
        if b is None:
            assert a is None or a.abs().sum() == 0, name
            continue
        torch.testing.assert_close(a, b, msg=f"gradient of {name}")


def test_router_output_and_load():
    torch.manual_seed(0)
    layer = MoELayer(16, 32, num_experts=4, top_k=2, router="topk", capacity_factor=0.5)
    out = layer.route_and_run(torch.randn(40, 16), None)
    assert out.router.expert_load.sum() + out.router.dropped == 80
    assert int(out.router.dropped) > 0


def test_identical_experts_equal_dense_ffn():
    torch.manual_seed(0)
    layer = MoELayer(8, 16, num_experts=3, top_k=2, router="attribute", num_attributes=4)
    with torch.no_grad():
        for p in (layer.w1, layer.b1, layer.w2, layer.b2):
            p.copy_(p[:1].expand_as(p))
    x = torch.randn(10, 8)
    y, _ = layer(x, torch.randint(0, 4, (10,)))
    dense = F.gelu(x @ layer.w1[0] + layer.b1[0]) @ layer.w2[0] + layer.b2[0]
    torch.testing.assert_close(y, dense)
    assert dense_equivalent_d_ff(layer) == 32


def test_backend_selection_on_cpu():
    layer = MoELayer(8, 16, 4, 2, router="topk")
    from unicl.moe.ops import expert_ffn

    assert layer.dispatch_fn(torch.zeros(1, 8)) is expert_ffn
    with pytest.raises(ValueError, match="backend"):
        MoELayer(8, 16, 4, 2, router="topk", backend="cuda")


def test_bad_inputs():
    with pytest.raises(ValueError, match="top_k"):
        MoELayer(8, 16, num_experts=2, top_k=3, router="topk")
    layer = MoELayer(8, 16, 4, 2, router="attribute", num_attributes=3)
    with pytest.raises(ValueError, match="d_model=8"):
        layer(torch.randn(5, 7), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"attributes must have shape \(5,\)"):
        layer(torch.randn(5, 8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="needs `attributes`"):
        layer(torch.randn(5, 8))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        layer(torch.randn(5, 8), torch.full((5,), 3))
    with pytest.raises(ValueError, match="activation"):
        MoELayer(8, 16, 4, 2, router="topk", activation="tanh")


@pytest.mark.parametrize("top_k", [1, 2])
def test_shared_attribute_plan_gives_the_same_layer(top_k):
    """A per-batch AttributePlan (tokens grouped by attribute once) changes nothing numerically."""
    from unicl.moe.kernels import build_attribute_plan

    torch.manual_seed(0)
    num_attributes = 11
    layer = MoELayer(24, 40, 5, top_k, router="attribute", num_attributes=num_attributes)
    layer.eval()  # no gate noise: both calls route identically
    x = torch.randn(3, 37, 24, requires_grad=True)
    attrs = torch.randint(0, num_attributes, (3, 37))
    attrs[0, :5] = 7  # a skewed histogram with absent attributes
    plan = build_attribute_plan(attrs.reshape(-1), num_attributes)
    y_ref, _ = layer(x, attrs)
    grads_ref = torch.autograd.grad(y_ref.square().sum(), [x, *layer.parameters()])
    y, _ = layer(x, attrs, attribute_plan=plan)
    grads = torch.autograd.grad(y.square().sum(), [x, *layer.parameters()])
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)
