"""The training loss (unicl/loss.py): weighted CE, aux term, equality with a dense model."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from unicl.loss import compute_loss
from unicl.model import ModelConfig, build_model

V, A = 80, 5


@dataclasses.dataclass
class FakeBatch:
    input_ids: torch.Tensor
    attributes: torch.Tensor
    positions: torch.Tensor
    loss_weights: torch.Tensor
    attention_mask: torch.Tensor
    task: str = "segmentation"


def make_batch(b=3, t=24, seed=0) -> FakeBatch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (b, t), generator=g)
    w = (torch.rand(b, t, generator=g) < 0.5).float() * torch.rand(b, t, generator=g)
    w[:, 0] = 0
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 18:] = False  # right padding
    w[~mask] = 0
    return FakeBatch(
        ids, torch.randint(0, A, (b, t), generator=g), torch.arange(t).expand(b, t), w, mask
    )


def cfg(**kw) -> ModelConfig:
    base = dict(n_layer=2, n_head=2, d_model=32, d_ff=40, max_positions=32, num_experts=4)
    base.update(kw)
    return ModelConfig(**base)


def test_weighted_ce_matches_full_head():
    torch.manual_seed(0)
    model = build_model(cfg(), V, A).eval()
    batch = make_batch()
    out = compute_loss(model, batch)
    logits = model(batch.input_ids, batch.attributes, batch.positions).logits  # (B, T, V)
    nll = F.cross_entropy(
        logits[:, :-1].reshape(-1, V), batch.input_ids[:, 1:].reshape(-1), reduction="none"
    )
    w = batch.loss_weights[:, 1:].reshape(-1)
    torch.testing.assert_close(out.ce, (nll * w).sum() / w.sum())
    assert out.num_tokens == int((w > 0).sum())
    torch.testing.assert_close(out.loss, out.ce + 0.02 * out.aux)
    assert out.aux > 0 and len(out.expert_load) == 1


@pytest.mark.parametrize("router", ["attribute", "topk"])
def test_identical_experts_equal_dense_model(router):
    """With every expert holding the dense FFN's weights, the MoE model's CE is the dense one."""
    torch.manual_seed(0)
    dense = build_model(cfg(router="dense", moe_layers="none"), V, A).eval()
    moe = build_model(cfg(router=router, moe_layers="all"), V, A).eval()
    state = {k: v for k, v in dense.state_dict().items() if ".mlp." not in k}
    missing, unexpected = moe.load_state_dict(state, strict=False)
    assert not unexpected and all(".moe." in k for k in missing)
    with torch.no_grad():
        for i, block in enumerate(moe.blocks):
            mlp = dense.blocks[i].mlp
            block.moe.w1.copy_(mlp.fc.weight.t().expand_as(block.moe.w1))
            block.moe.b1.copy_(mlp.fc.bias.expand_as(block.moe.b1))
            block.moe.w2.copy_(mlp.proj.weight.t().expand_as(block.moe.w2))
            block.moe.b2.copy_(mlp.proj.bias.expand_as(block.moe.b2))
    batch = make_batch()
    a, b = compute_loss(dense, batch), compute_loss(moe, batch)
    torch.testing.assert_close(b.ce, a.ce, rtol=1e-5, atol=1e-6)
    assert a.aux == 0 and b.aux > 0
    torch.testing.assert_close(b.loss, a.ce + 0.02 * b.aux, rtol=1e-5, atol=1e-6)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = build_model(cfg(), V, A).train()
    compute_loss(model, make_batch()).loss.backward()
    for name, p in model.named_parameters():
        if name.startswith("wpe") or ".w1" in name or ".w2" in name or ".b" in name:
            continue  # unused positions / unrouted experts may have zero gradient
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_batch():
    model = build_model(cfg(), V, A)
    batch = make_batch()
    batch.loss_weights = batch.loss_weights[:, :-1]
    with pytest.raises(ValueError, match="loss_weights"):
        compute_loss(model, batch)


def test_closed_spans_score_targets_within_their_range():
    """Targets inside a closed span use a softmax over that span; the rest the full head."""
    torch.manual_seed(0)
    model = build_model(cfg(), V, A).eval()
    batch = make_batch(seed=3)
    span = range(30, 62)
    out = compute_loss(model, batch, closed_spans=[span])
    logits = model(batch.input_ids, batch.attributes, batch.positions).logits[:, :-1]
    logits = logits.reshape(-1, V)  # (B*(T-1), V)
    targets = batch.input_ids[:, 1:].reshape(-1)
    inside = (targets >= span.start) & (targets < span.stop)
    assert inside.any() and (~inside).any()
    full = F.cross_entropy(logits, targets, reduction="none")
    local = F.cross_entropy(
        logits[:, span.start : span.stop],
        (targets - span.start).clamp(0, len(span) - 1),
        reduction="none",
    )
    nll = torch.where(inside, local, full)
    w = batch.loss_weights[:, 1:].reshape(-1)
    torch.testing.assert_close(out.ce, (nll * w).sum() / w.sum())
    assert out.ce < compute_loss(model, batch).ce  # fewer competitors: a smaller loss
    out.loss.backward()
    assert model.wte.weight.grad[span.start : span.stop].abs().sum() > 0


def test_targets_replace_the_input_ids_as_labels():
    torch.manual_seed(0)
    model = build_model(cfg(), V, A).eval()
    batch = make_batch()
    targets = torch.randint(0, V, batch.input_ids.shape, generator=torch.Generator().manual_seed(1))
    out = compute_loss(model, _with_targets(batch, targets))
    logits = model(batch.input_ids, batch.attributes, batch.positions).logits  # (B, T, V)
    nll = F.cross_entropy(
        logits[:, :-1].reshape(-1, V), targets[:, 1:].reshape(-1), reduction="none"
    )
    w = batch.loss_weights[:, 1:].reshape(-1)
    torch.testing.assert_close(out.ce, (nll * w).sum() / w.sum())


def _with_targets(batch: FakeBatch, targets: torch.Tensor):
    @dataclasses.dataclass
    class WithTargets(FakeBatch):
        targets: torch.Tensor | None = None

    return WithTargets(**dataclasses.asdict(batch), targets=targets)
