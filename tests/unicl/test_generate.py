"""Generation (unicl/generate.py): cache == recomputation, constraints, shared prefix, sampling."""

from __future__ import annotations

import pytest
import torch

from unicl.copy_head import add_votes
from unicl.generate import (
    Prompt,
    Sampling,
    SegmentSpec,
    filter_logits,
    generate,
    prefill_prefix,
)
from unicl.model import ModelConfig, build_model

V, A = 64, 6
CODES = range(10, 30)  # the "image code" span of this toy vocabulary
STOP = 5


@pytest.fixture(scope="module", params=["plain", "copy votes"])
def model(request):
    """A plain decoder, and one whose copy head votes for earlier ids 36-50 (the caption
    segment's 40-42 among them), so that decoding has to carry the votes along."""
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, d_model=32, d_ff=48, max_positions=96, num_experts=3)
    if request.param == "plain":
        return build_model(cfg, V, A)
    cfg = ModelConfig(**{**cfg.__dict__, "copy_head": True, "copy_values": "tokens"})
    sources = torch.zeros(V, dtype=torch.bool)
    sources[36:50] = True
    return build_model(cfg, V, A, copy_sources=sources)


@pytest.fixture(scope="module")
def table():
    return torch.arange(V) % A


def prompt(n: int, start: int = 0, seed: int = 0) -> Prompt:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (n,), generator=g)
    return Prompt(ids, torch.randint(0, A, (n,), generator=g), torch.arange(start, start + n))


def mask_of(ids) -> torch.Tensor:
    m = torch.zeros(V, dtype=torch.bool)
    m[list(ids)] = True
    return m


def segments(max_caption=8):
    return [
        SegmentSpec(mask_of(CODES), length=6),
        SegmentSpec(mask_of([40, 41, 42]), max_length=max_caption, stop_ids=[STOP]),
    ]


def assert_same(a, b):
    for sa, sb, pa, pb in zip(a.segments, b.segments, a.segment_probs, b.segment_probs):
        for x, y in zip(sa, sb):
            assert torch.equal(x, y)
        for x, y in zip(pa, pb):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_greedy_cache_equals_recomputation(model, table):
    prefix = prompt(20, seed=1)
    queries = [prompt(7, start=20, seed=2), prompt(4, start=20, seed=3), prompt(9, 20, seed=4)]
    cached = generate(model, queries, segments(), table, prefix=prefix)
    plain = generate(model, queries, segments(), table, prefix=prefix, use_cache=False)
    assert_same(cached, plain)
    for seg_ids in cached.segments:
        assert len(seg_ids[0]) == 6 and all(int(t) in CODES for t in seg_ids[0])
        assert all(int(t) in (40, 41, 42, STOP) for t in seg_ids[1])
    assert model.training  # the model's mode is restored


def test_sampled_stops_and_cache(model, table):
    queries = [prompt(5, seed=s) for s in range(6)]
    sampling = Sampling(temperature=3.0)
    segs = [SegmentSpec(mask_of([40]), max_length=10, stop_ids=[STOP]), segments()[0]]
    runs = []
    for use_cache in (True, False):
        g = torch.Generator().manual_seed(7)
        runs.append(
            generate(
                model, queries, segs, table, sampling=sampling, use_cache=use_cache, generator=g
            )
        )
    assert_same(*runs)
    lengths = [len(s[0]) for s in runs[0].segments]
    assert min(lengths) < 10  # some rows stopped early and idled while others went on
    for seg in runs[0].segments:
        caption, codes = seg
        stops = (caption == STOP).nonzero()[:, 0].tolist()
        assert stops in ([], [len(caption) - 1])  # a stop id ends the segment
        assert stops or len(caption) == 10  # otherwise the length limit does
        assert len(codes) == 6
    probs = runs[0].probs[0]
    assert ((probs > 0) & (probs <= 1)).all()


def test_shared_prefix_equals_separate_sequences(model, table):
    prefix = prompt(15, seed=1)
    queries = [prompt(6, start=15, seed=2), prompt(3, start=15, seed=3)]
    shared = generate(model, queries, segments(), table, prefix=prefix)
    pre = prefill_prefix(model, prefix)
    reused = generate(model, queries, segments(), table, prefix=pre)
    again = generate(model, queries, segments(), table, prefix=pre)  # the cache is not consumed
    assert_same(shared, reused)
    assert_same(shared, again)
    for i, q in enumerate(queries):
        joined = Prompt(*(torch.cat([a, b]) for a, b in zip(prefix, q)))
        alone = generate(model, joined, segments(), table)
        for x, y in zip(alone.segments[0], shared.segments[i]):
            assert torch.equal(x, y)


def test_positions_continue_and_attributes_from_table(model, table):
    # a different attribute table changes the (attribute-routed) continuation's inputs
    q = prompt(6, seed=3)
    segs = [SegmentSpec(mask_of(CODES), length=12)]
    a = generate(model, q, segs, table)
    b = generate(model, q, segs, (table + 1) % A)
    assert a.tokens[0].shape == (12,)
    assert not torch.equal(a.probs[0], b.probs[0])
    with pytest.raises(ValueError, match="max_positions"):
        generate(model, prompt(6, start=85), segs, table)


def test_top_k_one_is_greedy_and_filters(model, table):
    q = prompt(8, seed=5)
    greedy = generate(model, q, segments(), table)
    g = torch.Generator().manual_seed(0)
    topk1 = generate(
        model, q, segments(), table, sampling=Sampling(temperature=1.0, top_k=1), generator=g
    )
    for x, y in zip(greedy.segments[0], topk1.segments[0]):
        assert torch.equal(x, y)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = filter_logits(logits, Sampling(temperature=1.0, top_p=0.7)).isfinite()
    assert kept.tolist() == [[True, True, False, False]]
    kept = filter_logits(logits, Sampling(temperature=1.0, top_p=0.8)).isfinite()
    assert kept.tolist() == [[True, True, False, False]]
    kept = filter_logits(logits, Sampling(temperature=1.0, top_p=0.81)).isfinite()
    assert kept.tolist() == [[True, True, True, False]]
    kept = filter_logits(logits, Sampling(temperature=1.0, top_k=3)).isfinite()
    assert kept.tolist() == [[True, True, True, False]]


def test_bad_inputs(model, table):
    with pytest.raises(ValueError, match="exactly one"):
        SegmentSpec(mask_of(CODES))
    with pytest.raises(ValueError, match="exact-length"):
        SegmentSpec(mask_of(CODES), length=3, stop_ids=[STOP])
    with pytest.raises(TypeError, match="bool"):
        SegmentSpec(torch.ones(V), length=3)
    with pytest.raises(ValueError, match="temperature"):
        Sampling(temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        Sampling(top_p=0.0)
    q = prompt(5)
    with pytest.raises(ValueError, match="attribute_table"):
        generate(model, q, segments(), table[:-1])
    with pytest.raises(ValueError, match="allowed must be"):
        generate(model, q, [SegmentSpec(torch.ones(V + 1, dtype=torch.bool), length=2)], table)
    with pytest.raises(ValueError, match="1-D of one length"):
        generate(model, Prompt(q.input_ids, q.attributes[:3], q.positions), segments(), table)
    with pytest.raises(ValueError, match="segments is empty"):
        generate(model, q, [], table)
    with pytest.raises(TypeError, match="input_ids"):
        generate(model, [object()], segments(), table)


def sequence_logprob(model, q: Prompt, seq, allowed, table) -> float:
    """log P(seq | q) under the distribution restricted to `allowed` ids, by one plain
    forward pass over the prompt and the sequence (no cache, no generate())."""
    seq = torch.tensor(seq)
    n = q.input_ids.numel()
    ids = torch.cat([q.input_ids, seq[:-1]])
    attrs = torch.cat([q.attributes, table[seq[:-1]]])
    pos = torch.cat([q.positions, q.positions[-1] + 1 + torch.arange(len(seq) - 1)])
    model.eval()
    try:
        with torch.no_grad():
            out = model(ids[None], attrs[None], pos[None], return_hidden=True)
            logits = out.hidden[0, n - 1 :] @ model.head_weight.T  # (L, V)
    finally:
        model.train()
    if out.copy_votes is not None:
        votes = out.copy_votes
        logits = add_votes(logits, votes.weights[0, n - 1 :], votes.ids[0].expand(len(seq), -1))
    logits = logits.masked_fill(~allowed, float("-inf")).log_softmax(-1)
    return float(logits.gather(1, seq[:, None]).sum())


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_search_wide_enough_is_exhaustive(model, table, alpha):
    # 2 words and a stop id, at most 3 tokens: 15 answers ([S], [a S], [a b S], [a b c]); 16
    # beams keep them all, so the answer is the best of all by score / length ** alpha
    words = [40, 41]
    seg = SegmentSpec(mask_of(words), max_length=3, stop_ids=[STOP])
    allowed = mask_of([*words, STOP])
    for seed in range(3):
        q = prompt(7, seed=seed)
        answers = [[STOP]] + [[a, STOP] for a in words]
        answers += [[a, b, STOP] for a in words for b in words]
        answers += [[a, b, c] for a in words for b in words for c in words]
        scores = [sequence_logprob(model, q, a, allowed, table) for a in answers]
        ranks = [sc / len(a) ** alpha for sc, a in zip(scores, answers)]
        best = answers[max(range(len(answers)), key=ranks.__getitem__)]
        beam = generate(
            model, q, [seg], table, sampling=Sampling(num_beams=16, length_penalty=alpha)
        )
        assert beam.tokens[0].tolist() == best
        # the probabilities given are those of the answer's ids, one by one
        assert float(beam.probs[0].log().sum()) == pytest.approx(
            scores[answers.index(best)], abs=1e-4
        )


def test_beam_search_cache_equals_recomputation_and_carries_segments(model, table):
    prefix = prompt(20, seed=1)
    queries = [prompt(7, start=20, seed=2), prompt(4, start=20, seed=3), prompt(9, 20, seed=4)]
    sampling = Sampling(num_beams=3, length_penalty=0.5)
    cached = generate(model, queries, segments(), table, prefix=prefix, sampling=sampling)
    plain = generate(
        model, queries, segments(), table, prefix=prefix, sampling=sampling, use_cache=False
    )
    assert_same(cached, plain)
    greedy = generate(model, queries, segments(), table, prefix=prefix)
    for beam_ids in cached.segments:
        assert len(beam_ids[0]) == 6 and all(int(t) in CODES for t in beam_ids[0])
        caption = beam_ids[1].tolist()
        assert set(caption) <= {40, 41, 42, STOP}
        assert STOP not in caption[:-1]  # a stop id ends the caption
    one = generate(model, queries, segments(), table, prefix=prefix, sampling=Sampling(num_beams=1))
    assert_same(one, greedy)
    assert model.training


def test_beams_of_a_batch_are_those_of_each_query_alone(model, table):
    # several padded queries behind a shared prefix, a mask segment whose codes take their
    # image's positions (rewind), a caption whose stop id ends a segment before the last
    segs = [
        SegmentSpec(mask_of(CODES), length=4, rewind=4),
        SegmentSpec(mask_of([40, 41, 42]), max_length=5, stop_ids=[STOP]),
        SegmentSpec(mask_of([36, 37]), max_length=3, stop_ids=[STOP]),
    ]
    prefix = prompt(12, seed=1)
    queries = [prompt(7, start=12, seed=2), prompt(4, start=12, seed=3), prompt(9, 12, seed=4)]
    sampling = Sampling(num_beams=3, length_penalty=0.7)
    batch = generate(model, queries, segs, table, prefix=prefix, sampling=sampling)
    for i, q in enumerate(queries):
        joined = Prompt(*(torch.cat([a, b]) for a, b in zip(prefix, q)))
        alone = generate(model, joined, segs, table, sampling=sampling)
        for x, y in zip(alone.segments[0], batch.segments[i]):
            assert torch.equal(x, y)
        for x, y in zip(alone.segment_probs[0], batch.segment_probs[i]):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
