"""Routers (moe/router.py): GShard parity with DeepSpeed's gating, attribute routing, bad input."""

from __future__ import annotations

import os

import pytest
import torch

from unicl.moe.router import (
    AttributeRouter,
    TopKRouter,
    apply_capacity,
    build_router,
    expert_capacity,
    gshard_aux_loss,
)


@pytest.fixture(scope="module")
def ds_gating():
    """DeepSpeed's top1gating/top2gating (CPU accelerator; must be chosen before import)."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    sharded_moe = pytest.importorskip("deepspeed.moe.sharded_moe")
    return sharded_moe


def ds_routes(sharded_moe, logits, k, capacity_factor, min_capacity):
    """DeepSpeed's decision as (ids with -1 where dropped (N, K), weights (N, K), l_aux)."""
    if k == 1:
        l_aux, combine, _, _ = sharded_moe.top1gating(
            logits, capacity_factor, min_capacity, use_rts=False
        )
    else:
        l_aux, combine, _, _ = sharded_moe.top2gating(
            logits.clone(), capacity_factor, min_capacity, top2_2nd_expert_sampling=False
        )
    # combine (N, E, C): weight of token n in slot c of expert e
    per_expert = combine.sum(-1)  # (N, E)
    return per_expert, l_aux


def ours_dense(out, num_experts):
    """Our (ids, weights) as an (N, E) weight matrix for comparison."""
    n = out.expert_ids.shape[0]
    dense = torch.zeros(n, num_experts, dtype=out.weights.dtype)
    for kk in range(out.expert_ids.shape[1]):
        ids = out.expert_ids[:, kk]
        keep = ids >= 0
        dense[keep.nonzero()[:, 0], ids[keep]] += out.weights[keep, kk]
    return dense


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("capacity_factor", [0.5, 1.0, 1.25])
def test_topk_matches_deepspeed(ds_gating, k, capacity_factor):
    torch.manual_seed(k)
    n, e = 96, 6
    logits = torch.randn(n, e) * 2
    logits[:, 1] += 1.5  # skew so that the capacity limit bites
    router = TopKRouter(d_model=8, num_experts=e, top_k=k, capacity_factor=capacity_factor)
    router.eval()
    ours = router.route_logits(logits)
    ds_weights, ds_aux = ds_routes(ds_gating, logits, k, capacity_factor, router.min_capacity)
    torch.testing.assert_close(ours.aux_loss, ds_aux, rtol=1e-6, atol=1e-7)
    ours_w = ours_dense(ours, e)
    # the same number of assignments kept per expert
    assert torch.equal((ours_w > 0).sum(0), (ds_weights > 0).sum(0))
    if k == 2:
        # top2gating admits by choice rank then token order, as we do: the same tokens are
        # kept by the same experts, with the same renormalised weights
        assert torch.equal(ours_w > 0, ds_weights > 0)
        torch.testing.assert_close(ours_w, ds_weights, rtol=1e-6, atol=1e-7)
    else:
        # top1gating without random token selection keeps whichever tied tokens torch.topk
        # returns (unspecified order); where both keep a token, the weight is its probability
        both = (ours_w > 0) & (ds_weights > 0)
        torch.testing.assert_close(ours_w[both], ds_weights[both], rtol=1e-6, atol=1e-7)
        # and a token is never kept by an expert that is not its first choice
        first = torch.nn.functional.one_hot(logits.argmax(1), e).bool()  # (N, E)
        assert ((ds_weights > 0) <= first).all() and ((ours_w > 0) <= first).all()
    assert int(ours.dropped) > 0 or capacity_factor >= 1.25


def test_topk_dropless_aux_matches_deepspeed(ds_gating):
    torch.manual_seed(0)
    logits = torch.randn(50, 4)
    router = TopKRouter(d_model=8, num_experts=4, top_k=2).eval()
    ours = router.route_logits(logits)
    _, ds_aux = ds_routes(ds_gating, logits, 2, 100.0, 4)
    torch.testing.assert_close(ours.aux_loss, ds_aux)
    assert int(ours.dropped) == 0 and int(ours.expert_load.sum()) == 100
    torch.testing.assert_close(ours.weights.sum(1), torch.ones(50))


def test_aux_loss_formula():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.25, 0.25], [0.2, 0.2, 0.6]])
    top1 = probs.argmax(1)
    expected = 3 * sum(probs[:, j].mean() * (top1 == j).float().mean() for j in range(3))
    torch.testing.assert_close(gshard_aux_loss(probs, top1), expected)
    # rows standing for several tokens equal the rows repeated
    counts = torch.tensor([3, 1, 2, 5])
    rep = probs.repeat_interleave(counts, 0)
    torch.testing.assert_close(
        gshard_aux_loss(probs, top1, counts), gshard_aux_loss(rep, rep.argmax(1))
    )


def test_capacity_order_first_choices_first():
    ids = torch.tensor([[0, 1], [0, 1], [1, 0], [0, 2]])
    w = torch.full((4, 2), 0.5)
    kept, kw = apply_capacity(ids, w, num_experts=3, capacity=2)
    # expert 0 gets the first choices of tokens 0 and 1; token 3's first choice and token 2's
    # second choice are dropped; expert 1 takes token 2 (first) then token 0 (second)
    assert kept.tolist() == [[0, 1], [0, -1], [1, -1], [-1, 2]]
    assert kw.tolist() == [[0.5, 0.5], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    assert expert_capacity(100, 8, 2, 1.0, 4) == 25
    assert expert_capacity(10, 8, 1, 1.0, 4) == 4


def test_attribute_router_routes_by_attribute_only():
    torch.manual_seed(0)
    router = AttributeRouter(num_attributes=7, num_experts=4, top_k=2, dim=16)
    attrs = torch.tensor([3, 1, 3, 6, 1, 1, 0])
    out = router(torch.randn(7, 5), attrs)  # training mode: noisy but shared per attribute
    for a in attrs.unique():
        rows = (attrs == a).nonzero()[:, 0]
        assert (out.expert_ids[rows] == out.expert_ids[rows[0]]).all()
        assert torch.equal(out.weights[rows], out.weights[rows[0]].expand(len(rows), 2))
    torch.testing.assert_close(out.weights.sum(1), torch.ones(7))
    assert router.noise == pytest.approx(0.25)
    # eval: deterministic and equal to the per-token computation
    router.eval()
    a = router(None, attrs)
    logits = router.attribute_logits(attrs)
    probs = logits.softmax(-1)
    top = probs.topk(2, -1)
    assert torch.equal(a.expert_ids, top.indices)
    torch.testing.assert_close(a.weights, top.values / top.values.sum(-1, keepdim=True))
    torch.testing.assert_close(a.aux_loss, gshard_aux_loss(probs, top.indices[:, 0]))
    # gradient reaches the gate through the weights and the aux loss
    (a.weights[:, 0].sum() + a.aux_loss).backward()
    assert router.embed.weight.grad is not None and router.embed.weight.grad.abs().sum() > 0


def test_noise_only_in_training():
    router = TopKRouter(8, 4, 2, noise=1.0)
    logits = torch.randn(20, 4)
    router.eval()
    assert torch.equal(router.route_logits(logits).weights, router.route_logits(logits).weights)
    router.train()
    torch.manual_seed(0)
    a = router.route_logits(logits).weights
    b = router.route_logits(logits).weights
    assert not torch.equal(a, b)


def test_bad_inputs():
    with pytest.raises(ValueError, match="top_k"):
        TopKRouter(8, num_experts=4, top_k=5)
    with pytest.raises(ValueError, match="top_k"):
        AttributeRouter(3, num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="capacity_factor"):
        TopKRouter(8, 4, 2, capacity_factor=0.0)
    router = AttributeRouter(num_attributes=5, num_experts=4)
    with pytest.raises(ValueError, match=r"attribute ids must lie in \[0, 5\)"):
        router(None, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="attribute ids"):
        router(None, torch.tensor([-1, 2]))
    with pytest.raises(ValueError, match="attributes must be"):
        router(None, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        router(None, torch.zeros(3))
    with pytest.raises(ValueError, match="disagree"):
        router(torch.randn(4, 8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        TopKRouter(8, 4)(torch.randn(3, 7))
    with pytest.raises(ValueError, match="num_attributes"):
        build_router("attribute", d_model=8, num_experts=4, top_k=2)
    with pytest.raises(ValueError, match="router must be one of"):
        build_router("hash", d_model=8, num_experts=4, top_k=2)
