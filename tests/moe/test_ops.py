"""Dispatch ops (moe/ops.py) against a naive per-token loop, outputs and all gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unicl.moe import ops
from unicl.moe.ops import expert_ffn, expert_ffn_steps
from unicl.moe.plan import make_plan


def naive_moe(x, expert_ids, weights, w1, b1, w2, b2, act=F.gelu):
    """One token and one choice at a time: the definition of the op."""
    rows = []
    for n in range(x.shape[0]):
        acc = torch.zeros_like(x[n])
        for k in range(expert_ids.shape[1]):
            e = int(expert_ids[n, k])
            if e < 0:
                continue
            h = act(x[n] @ w1[e] + b1[e])
            acc = acc + weights[n, k] * (h @ w2[e] + b2[e])
        rows.append(acc)
    return torch.stack(rows)


def make_case(n=29, d=12, f=20, e=5, k=2, dtype=torch.float64, seed=0, skew=False, drop=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype, requires_grad=True)
    logits = torch.randn(n, e, generator=g)
    if skew:  # most tokens prefer expert 0, expert e-1 gets nothing
        logits[:, 0] += 4.0
        logits[:, e - 1] = -1e9
    ids = logits.topk(k, dim=-1).indices
    if drop:
        ids[::3, -1] = -1
        ids[5] = -1  # a token with every choice dropped
    w = torch.rand(n, k, generator=g, dtype=dtype, requires_grad=True)
    params = [
        torch.randn(e, d, f, generator=g, dtype=dtype) * 0.3,
        torch.randn(e, f, generator=g, dtype=dtype) * 0.1,
        torch.randn(e, f, d, generator=g, dtype=dtype) * 0.3,
        torch.randn(e, d, generator=g, dtype=dtype) * 0.1,
    ]
    return x, ids, w, [p.requires_grad_() for p in params]


def grads(fn, x, ids, w, params):
    out = fn(x, ids, w, *params)
    g = torch.randn_like(out, generator=torch.Generator().manual_seed(1))
    tensors = [x, w, *params]
    return out, torch.autograd.grad(out, tensors, g)


@pytest.fixture(params=["auto", "batched", "packed"])
def layout(request, monkeypatch):
    """Run the fused path with its default layout choice, always batched, or never batched."""
    limits = {"auto": ops.MAX_PADDING, "batched": float("inf"), "packed": -1.0}
    monkeypatch.setattr(ops, "MAX_PADDING", limits[request.param])
    return request.param


@pytest.mark.parametrize("skew", [False, True])
@pytest.mark.parametrize("drop", [False, True])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_expert_ffn_matches_naive_loop(k, drop, skew, layout):
    x, ids, w, params = make_case(k=k, drop=drop, skew=skew)
    ref_out, ref_grads = grads(naive_moe, x, ids, w, params)
    for fn in (expert_ffn, expert_ffn_steps):
        out, got = grads(fn, x, ids, w, params)
        torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
        for a, b in zip(got, ref_grads):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu"])
def test_expert_ffn_gradcheck(activation, layout):
    x, ids, w, params = make_case(n=9, d=4, f=6, e=3, k=2, drop=True)
    fn = lambda x, w, *p: expert_ffn(x, ids, w, *p, activation=activation)
    assert torch.autograd.gradcheck(fn, (x, w, *params))


def test_float32_close_to_float64():
    x, ids, w, params = make_case()
    ref = expert_ffn(x, ids, w, *params)
    out = expert_ffn(x.float(), ids, w.float(), *[p.float() for p in params])
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)


def test_make_plan_groups_by_expert():
    ids = torch.tensor([[2, 0], [0, -1], [2, 1], [-1, -1]])
    plan = make_plan(ids, num_experts=4)
    assert plan.counts.tolist() == [2, 1, 2, 0]
    assert plan.offsets.tolist() == [0, 2, 3, 5, 5]
    # stable: within an expert, assignments stay in (token, choice) order
    assert plan.slots.tolist() == [1, 2, 5, 0, 4]
    assert plan.tokens.tolist() == [0, 1, 2, 0, 2]
    assert not plan.dropless
    assert make_plan(ids.clamp_min(0), 4).dropless


def test_layout_pads_balanced_routing_into_one_batch():
    # counts 3, 2, 3: every expert padded to 3 rows, all three in one (3, 3, .) batch
    ids = torch.tensor([[0, 1], [2, 0], [2, 1], [0, 2]])
    plan = make_plan(ids, num_experts=3)
    lay = ops._layout(plan, max_padding=0.125)
    assert (lay.rows, lay.blocks, lay.idle) == (9, [ops._Block(0, 3, 0, 3)], [])
    assert lay.padding.tolist() == [5]  # expert 1's third row
    # every slot's row holds that slot's token, and the slot's row maps back to the slot
    for s in range(8):
        row = int(lay.slot_rows[s])
        assert int(lay.tokens[row]) == s // 2 and int(lay.row_slots[row]) == s
    assert int(lay.row_slots[5]) == 8  # the padding row reads the appended zero weight
    # more padding than allowed, or an expert without rows: packed back to back, one per expert
    packed = ops._layout(plan, max_padding=0.1)
    assert packed.rows == 8 and packed.padding is None
    assert packed.blocks == [ops._Block(0, 1, 0, 3), ops._Block(1, 2, 3, 2), ops._Block(2, 3, 5, 3)]
    skewed = ops._layout(make_plan(torch.tensor([[0, 1], [1, 0], [1, -1]]), num_experts=3))
    assert skewed.blocks == [ops._Block(0, 1, 0, 2), ops._Block(1, 2, 2, 3)]
    assert skewed.idle == [2] and int(skewed.slot_rows[5]) == 5  # dropped slot -> zero row


def test_workspace_reuse_across_layers(layout):
    # two dispatch calls in one graph share the CPU workspace: each call's temporaries must be
    # dead before the next call takes them, in forward order and in reverse order in backward
    x, ids, w, params = make_case(k=2, drop=True)
    _, ids2, w2, params2 = make_case(k=2, seed=1)

    def two_layers(fn):
        h = x + fn(x, ids, w, *params)
        return h + fn(torch.tanh(h), ids2, w2, *params2)

    leaves = [x, w, w2, *params, *params2]
    g = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(2))
    ops.release_workspace()
    out = two_layers(expert_ffn)
    got = torch.autograd.grad(out, leaves, g)
    ref_out = two_layers(expert_ffn_steps)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    for a, b in zip(got, torch.autograd.grad(ref_out, leaves, g)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    # results never alias the workspace
    (buf,) = ops._workspace.buffers.values()
    lo, hi = buf.data_ptr(), buf.data_ptr() + buf.numel() * buf.element_size()
    for t in (out, *got):
        assert not lo <= t.data_ptr() < hi
    ops.release_workspace()
    assert not ops._workspace.buffers


def test_all_dropped_gives_zero():
    x, ids, w, params = make_case(n=4)
    out = expert_ffn(x, torch.full_like(ids, -1), w, *params)
    assert torch.equal(out, torch.zeros_like(out))


def test_bad_inputs():
    x, ids, w, params = make_case()
    with pytest.raises(ValueError, match="expert_ids must lie"):
        expert_ffn(x, ids + 10, w, *params)
    with pytest.raises(ValueError, match="weights must have the shape"):
        expert_ffn(x, ids, w[:, :1], *params)
    with pytest.raises(ValueError, match="w1 must be"):
        expert_ffn(x[:, :3], ids, w, *params)
    with pytest.raises(ValueError, match="expert_ids must be"):
        expert_ffn(x, ids[:-1], w, *params)
    with pytest.raises(TypeError, match="int64"):
        expert_ffn(x, ids.int(), w, *params)
    with pytest.raises(ValueError, match="b2 must have shape"):
        expert_ffn(x, ids, w, *params[:3], params[3][:, :2])
    with pytest.raises(ValueError, match="activation"):
        expert_ffn(x, ids, w, *params, activation="swish")
