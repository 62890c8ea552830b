"""The copy head (ModelConfig.copy_head, unicl/model.py CopyHead): caching, masking, copying."""

from __future__ import annotations

import pytest
import torch

from unicl.model import ModelConfig, build_model

V, A = 96, 7
TEXT = torch.zeros(V, dtype=torch.bool)
TEXT[10:90] = True  # the ids the head may copy (a text span)
NAMES = (1, 2)  # the ids that open and close a name (<c_st>, <c_ed>)


def tiny(**kw) -> ModelConfig:
    base = dict(n_layer=2, n_head=2, d_model=32, d_ff=48, max_positions=64, num_experts=3)
    base.update(kw)
    return ModelConfig(copy_head=True, **base)


def inputs(b=2, t=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (b, t), generator=g)
    attrs = torch.randint(0, A, (b, t), generator=g)
    return ids, attrs, torch.arange(t).expand(b, t)


@pytest.fixture(params=[False, True], ids=["copy", "copy+continue"])
def cont(request):
    return request.param


@pytest.fixture(params=["rows", "tokens"])
def values(request):
    return request.param


def _model(seed=0, sources=TEXT, **kw):
    torch.manual_seed(seed)
    names = NAMES if kw.get("copy_continue") else None
    return build_model(tiny(**kw), V, A, copy_sources=sources, name_brackets=names).eval()


def test_continuing_needs_the_copy_head():
    with pytest.raises(ValueError, match="copy_continue needs model.copy_head"):
        ModelConfig(copy_continue=True)


def test_continuing_needs_the_name_brackets():
    with pytest.raises(ValueError, match="copy_continue needs the ids of the name brackets"):
        build_model(tiny(copy_continue=True), V, A, copy_sources=TEXT)


def test_only_names_continue():
    """After token 20 the head continues with what followed 20 inside a name, never with what
    followed it elsewhere (after " blue": not a demonstration's next noun)."""
    model = _model(copy_continue=True)
    with torch.no_grad():
        model.copy.cont.copy_(torch.tensor([50.0, 0.0]))  # continuation decides alone
        model.copy.log_scale.fill_(8.0)  # and a copy decides the logits
        model.copy.gate.bias.fill_(10.0)

    def last_guess(ids):
        ids = torch.tensor([ids])
        pos = torch.arange(ids.shape[1])[None]
        return int(model(ids, torch.zeros_like(ids), pos).logits[0, -1].argmax())

    # 20 30 outside a name, 20 40 inside one: after 20 the head copies 40
    assert last_guess([20, 30, 95, 1, 20, 40, 2, 95, 20]) == 40
    assert last_guess([1, 20, 40, 2, 95, 20, 30, 95, 20]) == 40
    # outside names the continuation changes nothing at all
    outside = torch.tensor([[20, 30, 95, 1, 60, 2, 95, 20]])
    args = (outside, torch.zeros_like(outside), torch.arange(8)[None])
    strong = model(*args).logits
    with torch.no_grad():
        model.copy.cont.zero_()
    torch.testing.assert_close(model(*args).logits, strong)
    with torch.no_grad():
        model.copy.cont.copy_(torch.tensor([50.0, 0.0]))
    # 50 ends the name: its continuation is the stop key <c_ed>, which adds nothing
    plain = last_guess([1, 60, 50, 2, 95, 50, 70, 95, 50])
    assert plain != 70 and plain != 60


def test_a_started_name_is_finished_even_with_the_gate_shut():
    """Decoding with a gate that learned to stay shut (a grounded language model that expects
    another word) still copies the next piece of a name it has started, and nothing elsewhere."""
    model = _model(copy_continue=True)
    with torch.no_grad():
        model.copy.cont.copy_(torch.tensor([50.0, 0.0]))
        model.copy.log_scale.fill_(8.0)
        model.copy.gate.weight.zero_()
        model.copy.gate.bias.fill_(-10.0)  # shut everywhere (8 more still leaves it at -2)

    def logits(ids):
        ids = torch.tensor([ids])
        return model(ids, torch.zeros_like(ids), torch.arange(ids.shape[1])[None]).logits[0, -1]

    started = [1, 20, 40, 2, 95, 20]  # name "20 40"; 20 was just written
    free = [1, 20, 40, 2, 95, 30]  # no name started
    with_head = {k: logits(ids) for k, ids in (("started", started), ("free", free))}
    assert int(with_head["started"].argmax()) == 40
    with torch.no_grad():
        model.copy.log_scale.fill_(-30.0)  # the head's contribution off
    gain = {k: with_head[k] - logits(ids) for k, ids in (("started", started), ("free", free))}
    assert float(gain["started"][40]) > 1.0
    assert float(gain["free"].abs().max()) < 0.01  # where no name was started it stays shut
    with torch.no_grad():
        model.copy.log_scale.fill_(8.0)
    model.train()  # the rule is for decoding: in training the learned gate alone decides
    assert int(logits(started).argmax()) != 40


def test_needs_its_table_of_copyable_ids():
    with pytest.raises(ValueError, match="copy_head needs a \\(96,\\) bool table"):
        build_model(tiny(), V, A)
    with pytest.raises(ValueError, match="copy_head"):
        build_model(tiny(), V, A, copy_sources=torch.ones(5, dtype=torch.bool))


def test_cached_decoding_equals_the_full_forward(cont, values):
    model = _model(copy_continue=cont, copy_values=values)
    ids, attrs, pos = inputs()
    full = model(ids, attrs, pos).logits
    cache = model.new_cache(batch=2, capacity=32)
    parts = [model(ids[:, :12], attrs[:, :12], pos[:, :12], kv_cache=cache).logits]
    for t in range(12, 20):
        step = slice(t, t + 1)
        parts.append(model(ids[:, step], attrs[:, step], pos[:, step], kv_cache=cache).logits)
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)
    # a shared prefix expanded to more rows continues like the full forward too
    one = model.new_cache(1, 12)
    model(ids[:1, :12], attrs[:1, :12], pos[:1, :12], kv_cache=one)
    rows = one.expand(3, capacity=13)
    assert torch.equal(rows.copy_keys[2, :12], one.copy_keys[0, :12])
    tail = [z[:1, 12:13].expand(3, 1) for z in (ids, attrs, pos)]
    out = model(*tail, kv_cache=rows).logits
    torch.testing.assert_close(out[1], full[0, 12:13], rtol=1e-5, atol=1e-5)


def test_padding_keys_are_not_copied(cont, values):
    model = _model(copy_continue=cont, copy_values=values)
    ids, attrs, pos = inputs(b=1, t=12)
    alone = model(ids, attrs, pos).logits
    pad = 5
    p_ids = torch.cat([torch.full((1, pad), 20), ids], 1)  # copyable ids, but padding
    p_attrs = torch.cat([torch.zeros(1, pad, dtype=torch.long), attrs], 1)
    p_pos = torch.cat([torch.zeros(1, pad, dtype=torch.long), pos], 1)
    mask = torch.arange(pad + 12)[None] >= pad
    padded = model(p_ids, p_attrs, p_pos, attention_mask=mask).logits
    torch.testing.assert_close(padded[:, pad:], alone, rtol=1e-5, atol=1e-5)


def test_nothing_to_copy_leaves_the_decoder_as_it_was():
    nothing = _model(sources=torch.zeros(V, dtype=torch.bool))
    torch.manual_seed(0)
    plain = build_model(ModelConfig(**{**tiny().__dict__, "copy_head": False}), V, A).eval()
    plain.load_state_dict(nothing.state_dict(), strict=False)
    ids, attrs, pos = inputs()
    torch.testing.assert_close(nothing(ids, attrs, pos).logits, plain(ids, attrs, pos).logits)


def _copy_batch(g: torch.Generator, words: torch.Tensor, b: int = 64):
    """[1] X [2] r r r r [3] -> X: copy the word after [1]; r are random non-word ids."""
    x = words[torch.randint(0, len(words), (b,), generator=g)]
    filler = torch.randint(90, V, (b, 4), generator=g)
    ids = torch.cat([torch.ones(b, 1), x[:, None], torch.full((b, 1), 2), filler,
                     torch.full((b, 1), 3)], 1).long()  # fmt: skip
    return ids, x


def _copy_accuracy(copy: bool, values: str = "rows", width: int = 64) -> float:
    """Train on words 10-49, test on words 50-89 that the model never saw.

    Width 64 for copied rows: in 32 dimensions random embeddings of different words overlap
    enough that copying rows reaches only about 70 %; votes do not overlap."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_layer=2, n_head=2, d_model=width, d_ff=64, max_positions=16, router="dense",
        copy_head=copy, copy_values=values,
    )  # fmt: skip
    model = build_model(cfg, V, A, copy_sources=TEXT if copy else None)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    seen, unseen = torch.arange(10, 50), torch.arange(50, 90)
    pos = torch.arange(8).expand(64, 8)
    attrs = torch.zeros(64, 8, dtype=torch.long)
    for _ in range(100):
        ids, x = _copy_batch(g, seen)
        loss = torch.nn.functional.cross_entropy(model(ids, attrs, pos).logits[:, -1], x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        ids, x = _copy_batch(g, unseen)
        return float((model(ids, attrs, pos).logits[:, -1].argmax(-1) == x).float().mean())


def test_the_copy_head_writes_words_it_never_learned_to_write():
    assert _copy_accuracy(copy=True) > 0.9
    assert _copy_accuracy(copy=False) < 0.2  # without it, unseen words are out of reach
    assert _copy_accuracy(copy=True, values="tokens", width=32) > 0.9


def test_votes_lift_only_the_ids_that_can_be_copied():
    model = _model(copy_values="tokens")
    ids, attrs, pos = inputs(b=2, t=16)
    out = model(ids, attrs, pos, return_hidden=True)
    lift = model(ids, attrs, pos).logits - model.logits(out.hidden)  # (B, T, V)
    for b in range(2):
        for t in range(16):
            earlier = {int(i) for i in ids[b, : t + 1] if TEXT[i]}
            lifted = set((lift[b, t] > 1e-6).nonzero()[:, 0].tolist())
            assert lifted <= earlier  # nothing but earlier copyable ids gains
            if earlier:
                assert lifted  # and the gate, at initialisation half open, lifts some


def test_the_loss_scores_the_votes_as_the_logits_carry_them():
    from unicl.loss import compute_loss

    model = _model(copy_values="tokens")
    ids, attrs, pos = inputs(b=2, t=16)
    weights = torch.ones_like(ids, dtype=torch.float)
    batch = type("Batch", (), dict(input_ids=ids, attributes=attrs, positions=pos))()
    batch.loss_weights = weights
    logits = model(ids, attrs, pos).logits[:, :-1]
    targets = ids[:, 1:]
    full = torch.nn.functional.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))
    torch.testing.assert_close(compute_loss(model, batch).ce, full, rtol=1e-5, atol=1e-5)
    # a closed span over the copyable ids: its targets are scored against that span only
    span, flat = range(10, 90), targets.reshape(-1)
    inside = (flat >= 10) & (flat < 90)
    local = logits.reshape(-1, V)[:, 10:90]
    closed = torch.where(
        inside,
        torch.nn.functional.cross_entropy(local, (flat - 10).clamp(0, 79), reduction="none"),
        torch.nn.functional.cross_entropy(logits.reshape(-1, V), flat, reduction="none"),
    ).mean()
    torch.testing.assert_close(compute_loss(model, batch, [span]).ce, closed, rtol=1e-5, atol=1e-5)


def test_greedy_decoding_follows_the_voted_logits():
    from unicl.generate import Prompt, SegmentSpec, generate

    model = _model(copy_values="tokens", copy_continue=True)
    ids, attrs, pos = inputs(b=1, t=10)
    allowed = torch.zeros(V, dtype=torch.bool)
    allowed[10:90] = True
    table = torch.zeros(V, dtype=torch.long)
    out = generate(model, Prompt(ids[0], attrs[0], pos[0]), [SegmentSpec(allowed, length=5)], table)
    seq, seq_attrs = ids[0].tolist(), attrs[0].tolist()
    for _ in range(5):  # the same by recomputing the whole sequence and taking the argmax
        t = torch.tensor(seq)[None]
        logits = model(t, torch.tensor(seq_attrs)[None], torch.arange(len(seq))[None]).logits
        seq.append(int(logits[0, -1].masked_fill(~allowed, float("-inf")).argmax()))
        seq_attrs.append(0)  # the table's attribute of every generated id
    assert out.segments[0][0].tolist() == seq[10:]


def _name_batch(g: torch.Generator, words: torch.Tensor, b: int = 64) -> torch.Tensor:
    """filler (0-4 ids) [1] A B filler [3] A B: a two-piece name at a varying offset."""
    rows = []
    for _ in range(b):
        name = words[torch.randint(0, len(words), (2,), generator=g)]
        k = int(torch.randint(0, 5, (1,), generator=g))
        filler = torch.randint(90, V, (5,), generator=g)
        parts = [filler[:k], torch.tensor([1]), name, filler[k:], torch.tensor([3]), name]
        rows.append(torch.cat(parts))
    return torch.stack(rows)  # (b, 11)


def _continuing_model():
    """A 2-layer toy with a continuing copy head, and its optimiser."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_layer=2, n_head=2, d_model=64, d_ff=64, max_positions=16, router="dense",
        copy_head=True, copy_continue=True,
    )  # fmt: skip
    model = build_model(cfg, V, A, copy_sources=TEXT, name_brackets=NAMES)
    return model, torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)


def _step(opt, loss) -> None:
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_continuing_copies_both_pieces_of_a_name_it_never_saw():
    model, opt = _continuing_model()
    g = torch.Generator().manual_seed(0)
    pos = torch.arange(11).expand(64, 11)
    attrs = torch.zeros(64, 11, dtype=torch.long)
    for _ in range(150):
        ids = _name_batch(g, torch.arange(10, 50))
        logits = model(ids, attrs, pos).logits[:, -3:-1]  # predicts A after [3], B after A
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), ids[:, -2:].reshape(-1))
        _step(opt, loss)
    with torch.no_grad():
        ids = _name_batch(g, torch.arange(50, 90))
        hit = model.eval()(ids, attrs, pos).logits[:, -3:-1].argmax(-1) == ids[:, -2:]
    assert hit.float().mean(0).min() > 0.95  # both pieces


def _ended_batch(g: torch.Generator, words: torch.Tensor, b: int = 64):
    """[1] N [2] filler [3] N [2]: a name N of 1-3 pieces ends with [2] in the prompt and in the
    answer. Returns the ids (b, 14, ending in filler), the index of [3], the name's length."""
    rows, lengths = [], []
    for _ in range(b):
        n = int(torch.randint(1, 4, (1,), generator=g))
        name = words[torch.randint(0, len(words), (n,), generator=g)]
        filler = torch.randint(90, V, (10 - 2 * n,), generator=g)
        one, two, three = torch.tensor([1]), torch.tensor([2]), torch.tensor([3])
        parts = [one, name, two, filler[:2], three, name, two, filler[2:]]
        rows.append(torch.cat(parts))
        lengths.append(n)
    start = torch.tensor(lengths) + 4  # the index of [3]
    return torch.stack(rows), start, torch.tensor(lengths)


def _stops_after_unseen_names() -> float:
    """Train on words 10-49; the share of names of unseen words (50-89) followed by [2]."""
    model, opt = _continuing_model()
    g = torch.Generator().manual_seed(0)
    pos = torch.arange(14).expand(64, 14)
    attrs = torch.zeros(64, 14, dtype=torch.long)
    at = torch.arange(14)[None]

    def answer(ids, start, n):  # the answer's targets: its name and [2]
        return (at >= start[:, None]) & (at <= (start + n)[:, None])

    for _ in range(200):
        ids, start, n = _ended_batch(g, torch.arange(10, 50))
        logits = model(ids, attrs, pos).logits[:, :-1]
        keep = answer(ids, start, n)[:, :-1]
        _step(opt, torch.nn.functional.cross_entropy(logits[keep], ids[:, 1:][keep]))
    with torch.no_grad():
        ids, start, n = _ended_batch(g, torch.arange(50, 90))
        guess = model.eval()(ids, attrs, pos).logits.argmax(-1)
    last = start + n  # the answer's last piece, after which [2] comes
    return float((guess[torch.arange(64), last] == 2).float().mean())


def test_a_copied_name_ends_where_its_source_ends():
    # without stop keys nothing tells the head an unseen name has ended: it copies on
    assert _stops_after_unseen_names() > 0.95
