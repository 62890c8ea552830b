"""The decoder (unicl/model.py): config rules, shapes, caching, masking, bad input."""

from __future__ import annotations

import pytest
import torch

from unicl.kv_cache import KVCache
from unicl.model import ModelConfig, build_model

V, A = 96, 7


def tiny(**kw) -> ModelConfig:
    base = dict(n_layer=2, n_head=2, d_model=32, d_ff=48, max_positions=64, num_experts=3)
    base.update(kw)
    return ModelConfig(**base)


def inputs(b=2, t=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (b, t), generator=g)
    attrs = torch.randint(0, A, (b, t), generator=g)
    pos = torch.arange(t).expand(b, t)
    return ids, attrs, pos


def test_config_rules():
    assert ModelConfig().moe_layer_indices() == [1, 3]
    paper = ModelConfig.paper()
    assert paper.moe_layer_indices() == [1, 3, 5, 7, 9, 11]
    assert (paper.n_layer, paper.d_model, paper.max_positions, paper.num_experts) == (
        12,
        768,
        2060,
        8,
    )
    assert tiny(moe_layers="odd").moe_layer_indices() == [0]
    assert tiny(moe_layers=[1, 0]).moe_layer_indices() == [0, 1]
    assert tiny(router="dense").moe_layer_indices() == []
    with pytest.raises(ValueError, match="top_k"):
        tiny(top_k=4)
    with pytest.raises(ValueError, match="divisible"):
        tiny(n_head=5)
    with pytest.raises(ValueError, match="moe_layers"):
        tiny(moe_layers=[2])
    with pytest.raises(ValueError, match="moe_layers"):
        tiny(moe_layers="every")
    with pytest.raises(ValueError, match="router"):
        tiny(router="hash")
    with pytest.raises(ValueError, match="moe_backend"):
        tiny(moe_backend="cuda")


def test_config_from_yaml_dict():
    from unicl.config import from_dict

    cfg = from_dict(ModelConfig, {"moe_layers": [0], "capacity_factor": 1.25, "router": "topk"})
    assert cfg.moe_layer_indices() == [0] and cfg.capacity_factor == 1.25


@pytest.mark.parametrize("router", ["attribute", "topk", "dense"])
def test_forward_shapes(router):
    torch.manual_seed(0)
    model = build_model(tiny(router=router), V, A).eval()
    out = model(*inputs())
    assert out.logits.shape == (2, 20, V) and out.hidden is None
    n_moe = 0 if router == "dense" else 1
    assert len(out.expert_load) == n_moe
    if n_moe:
        assert int(out.expert_load[0].sum()) == 2 * 20 * 2 and out.aux_loss > 0
    else:
        assert out.aux_loss == 0
    hid = model(*inputs(), return_hidden=True)
    torch.testing.assert_close(model.logits(hid.hidden), out.logits)


def test_tied_head_and_init():
    model = build_model(tiny(), V, A)
    assert model.head is None
    untied = build_model(tiny(tie_embeddings=False), V, A)
    assert untied.num_parameters() == model.num_parameters() + V * 32
    # residual projections start smaller (GPT-2)
    std = model.blocks[0].attn.proj.weight.std().item()
    assert std < 0.02 * 0.8


def test_causal():
    torch.manual_seed(0)
    model = build_model(tiny(), V, A).eval()
    ids, attrs, pos = inputs(b=1)
    full = model(ids, attrs, pos).logits
    ids2 = ids.clone()
    ids2[0, 15:] = (ids2[0, 15:] + 1) % V
    changed = model(ids2, attrs, pos).logits
    torch.testing.assert_close(full[:, :15], changed[:, :15])
    assert not torch.allclose(full[:, 15:], changed[:, 15:])


def test_kv_cache_equals_full_forward():
    torch.manual_seed(0)
    model = build_model(tiny(), V, A).eval()
    ids, attrs, pos = inputs()
    full = model(ids, attrs, pos).logits
    cache = model.new_cache(batch=2, capacity=32)
    parts = [model(ids[:, :12], attrs[:, :12], pos[:, :12], kv_cache=cache).logits]
    for t in range(12, 20):
        parts.append(
            model(ids[:, t : t + 1], attrs[:, t : t + 1], pos[:, t : t + 1], kv_cache=cache).logits
        )
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)


def test_left_padding_with_mask_matches_unpadded():
    torch.manual_seed(0)
    model = build_model(tiny(), V, A).eval()
    ids, attrs, pos = inputs(b=1, t=12)
    alone = model(ids, attrs, pos).logits
    pad = 5
    p_ids = torch.cat([torch.zeros(1, pad, dtype=torch.long), ids], 1)
    p_attrs = torch.cat([torch.zeros(1, pad, dtype=torch.long), attrs], 1)
    p_pos = torch.cat([torch.zeros(1, pad, dtype=torch.long), pos], 1)
    mask = torch.arange(pad + 12)[None] >= pad
    padded = model(p_ids, p_attrs, p_pos, attention_mask=mask).logits
    assert torch.isfinite(padded).all()
    torch.testing.assert_close(padded[:, pad:], alone, rtol=1e-5, atol=1e-5)


def test_cache_expand_shares_prefix():
    model = build_model(tiny(), V, A).eval()
    ids, attrs, pos = inputs(b=1, t=6)
    cache = model.new_cache(1, 10)
    model(ids, attrs, pos, kv_cache=cache)
    big = cache.expand(3, capacity=16)
    assert isinstance(big, KVCache) and big.batch == 3 and big.length == 6
    assert torch.equal(big.keys[1][2, :, :6], cache.keys[1][0, :, :6])
    with pytest.raises(ValueError, match="one-row"):
        big.expand(2)


def test_bad_inputs():
    model = build_model(tiny(), V, A)
    ids, attrs, pos = inputs()
    with pytest.raises(ValueError, match="max_positions=64"):
        model(ids, attrs, pos + 50)
    with pytest.raises(ValueError, match=r"attribute ids must lie in \[0, num_attributes=7\)"):
        model(ids, attrs + A, pos)
    with pytest.raises(ValueError, match="input_ids must lie"):
        model(ids + V, attrs, pos)
    with pytest.raises(ValueError, match="attributes must have the shape"):
        model(ids, attrs[:, :5], pos)
    with pytest.raises(ValueError, match="positions must have the shape"):
        model(ids, attrs, pos[:1])
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, attrs, pos, attention_mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(ids[0], attrs[0], pos[0])
    cache = model.new_cache(2, 8)
    with pytest.raises(ValueError, match="do not fit"):
        model(ids, attrs, pos, kv_cache=cache)
    with pytest.raises(TypeError, match="ModelConfig"):
        build_model({"n_layer": 2}, V, A)


def test_shared_attribute_plan_matches_per_layer_sorting():
    """Grouping tokens by attribute once per forward gives the same loss and gradients."""
    torch.manual_seed(0)
    reuse = build_model(tiny(dropout=0.0), vocab_size=97, num_attributes=8).eval()
    per_layer = build_model(tiny(dropout=0.0, attribute_plan=False), 97, 8).eval()
    per_layer.load_state_dict(reuse.state_dict())
    assert reuse.reuse_attribute_plan and not per_layer.reuse_attribute_plan
    ids, attrs, pos = inputs()
    out = [m(ids, attrs, pos).logits for m in (reuse, per_layer)]
    torch.testing.assert_close(out[0], out[1], rtol=1e-5, atol=1e-5)
    grads = [
        torch.autograd.grad(o.square().mean(), list(m.parameters()), allow_unused=True)
        for o, m in zip(out, (reuse, per_layer))
    ]
    for g, g_ref in zip(*grads):
        if g is not None:
            torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6)


def test_attribute_embedding_makes_attributes_part_of_the_input():
    torch.manual_seed(0)
    ids, attrs, pos = inputs()
    model = build_model(tiny(router="dense", attribute_embedding=True), V, A).eval()
    plain = build_model(tiny(router="dense"), V, A).eval()
    assert model.wae.weight.shape == (A, 32) and plain.wae is None
    other = (attrs + 1) % A
    with torch.no_grad():
        # without MoE routing, attributes reach the output only through the embedding
        assert not torch.allclose(model(ids, attrs, pos).logits, model(ids, other, pos).logits)
        torch.testing.assert_close(plain(ids, attrs, pos).logits, plain(ids, other, pos).logits)
