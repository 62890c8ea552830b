"""Constrained, KV-cached generation of answers: the inference of the method (arXiv 2312.02520).

The answer of an in-context query is one or more *segments*: a mask is exactly h*w image codes, a
caption is text/bin/tag tokens up to a stop id ([EOC]) or a length limit. Each segment restricts
the logits to an `allowed` id set (Vocabulary.allowed_mask), so the model can only produce tokens of
the right modality.

Batching: queries of different lengths are left-padded (padding keys are masked out, positions are
the caller's), so that every row's last prompt token sits in the last column and the rows decode in
lock step. A row that reaches its stop id early feeds masked filler tokens until the segment ends
for all rows. A shared prefix (the demonstrations) is prefilled once with batch 1 and its keys and
values are copied into every row of the batch cache, instead of being recomputed per query.

Only the allowed rows of the output head are evaluated, so a 1024-code mask segment costs 1/50 of
the full 52k-wide head per step. Decoding: greedy (temperature 0), or sampling with temperature,
top-k and top-p (nucleus); `sampling_options` is the one check of these options, for `Sampling`
and for the public API's keyword arguments.
`use_cache=False` recomputes the whole sequence each step: the reference the cache is tested
against (same tokens, same probabilities up to float rounding).

Letters: B queries, P prefix tokens, Q longest query, G generated tokens, V vocabulary rows.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from unicl.copy_head import add_votes
from unicl.model import KVCache, UniclDecoder
from unicl.tasks.base import MAX_LENGTH_PENALTY

#: the copy head's votes at one position: (weights (B, S), ids (B, S)), or None
Votes = tuple[torch.Tensor, torch.Tensor] | None


@dataclasses.dataclass
class SegmentSpec:
    """One generated segment: its allowed ids and how it ends."""

    #: (V,) bool, True for ids the segment may contain (stop ids are always allowed)
    allowed: torch.Tensor
    #: exact number of tokens (a mask: h * w codes); excludes max_length
    length: int | None = None
    #: most tokens, stop id included (a caption); excludes length
    max_length: int | None = None
    #: ids that end the segment; the stop id is emitted as the segment's last token
    stop_ids: Sequence[int] = ()
    #: > 0: token j takes position (next position - rewind + j) and the next position stays
    #: (a mask whose tokens share its image's positions); 0: positions continue
    rewind: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.allowed, torch.Tensor) or self.allowed.dtype != torch.bool:
            raise TypeError("SegmentSpec.allowed must be a bool tensor over the vocabulary")
        if self.allowed.dim() != 1:
            raise ValueError(f"SegmentSpec.allowed must be (V,), got {tuple(self.allowed.shape)}")
        if (self.length is None) == (self.max_length is None):
            raise ValueError("SegmentSpec needs exactly one of length (exact) or max_length")
        steps = self.length if self.length is not None else self.max_length
        if steps < 1:
            raise ValueError(f"SegmentSpec length/max_length must be >= 1, got {steps}")
        if self.length is not None and self.stop_ids:
            raise ValueError("SegmentSpec: an exact-length segment cannot have stop_ids")
        if self.rewind < 0 or (self.rewind and self.length is None):
            raise ValueError("SegmentSpec: rewind must be >= 0, and only for exact lengths")
        if not bool(self.allowed.any()) and not self.stop_ids:
            raise ValueError("SegmentSpec.allowed allows no id at all")

    @property
    def steps(self) -> int:
        return self.length if self.length is not None else self.max_length


#: the sampling options of the public API and their defaults (`sampling_options`)
SAMPLING_DEFAULTS = {
    "temperature": 0.0,
    "top_k": None,
    "top_p": None,
    "seed": 0,
    "max_tokens": None,
    "num_beams": None,
    "length_penalty": None,
}
#: option -> (an int?, may be None?, its allowed values, how the messages describe them)
_SAMPLING_RULES = {
    "temperature": (False, False, lambda v: v >= 0, "a finite number >= 0"),
    "top_k": (True, True, lambda v: v >= 1, "an int >= 1 or None"),
    "top_p": (False, True, lambda v: 0 < v <= 1, "a number in (0, 1] or None"),
    # the seeds torch.Generator.manual_seed takes
    "seed": (True, False, lambda v: -(2**63) <= v < 2**64, "an int in [-2**63, 2**64)"),
    "max_tokens": (True, True, lambda v: v >= 1, "an int >= 1 or None"),
    "num_beams": (True, True, lambda v: v >= 1, "an int >= 1 or None"),
    "length_penalty": (
        False,
        True,
        lambda v: abs(v) <= MAX_LENGTH_PENALTY,
        f"a number in [-{MAX_LENGTH_PENALTY}, {MAX_LENGTH_PENALTY}] or None",
    ),
}


def _is_number(value: object, integer: bool) -> bool:
    """An int (numpy's too, not a bool) or, unless `integer`, a float."""
    kind = numbers.Integral if integer else numbers.Real
    return isinstance(value, kind) and not isinstance(value, bool)


def sampling_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Sampling keyword arguments checked and completed with SAMPLING_DEFAULTS.

    The one check of sampling options, for the public API (Predictor.sampling) and
    `Sampling`. temperature: a finite number >= 0 (0 = greedy); top_k: an int >= 1
    or None; top_p: a number in (0, 1] or None; seed: an int (None = the default);
    max_tokens: an int >= 1 or None (caps free-length answers, the stop tag included);
    num_beams: an int >= 1 or None (> 1: beam search, which does not sample, so not with a
    temperature > 0; None: the task's `num_beams`); length_penalty: a number in [-10, 10]
    or None, the exponent alpha of the length a beam's log probability is divided by when
    beams are ranked (None: the task's). A bool is not a number here. An
    unknown option or a wrong type is a TypeError, a value out of range (inf and NaN
    included) a ValueError; both name the option.
    Values come back as Python ints and floats.
    """
    unknown = sorted(set(options) - set(SAMPLING_DEFAULTS))
    if unknown:
        raise TypeError(
            f"unknown sampling option(s) {unknown}; valid: {', '.join(SAMPLING_DEFAULTS)}"
        )
    out = {**SAMPLING_DEFAULTS, **options}
    if out["seed"] is None:
        out["seed"] = SAMPLING_DEFAULTS["seed"]
    for name, (integer, optional, allowed, described) in _SAMPLING_RULES.items():
        value = out[name]
        if value is None and optional:
            continue
        if not _is_number(value, integer):
            raise TypeError(f"{name} must be {described}, got {value!r}")
        if not ((integer or math.isfinite(value)) and allowed(value)):
            raise ValueError(f"{name} must be {described}, got {value!r}")
        out[name] = int(value) if integer else float(value)
    if (out["num_beams"] or 1) > 1 and out["temperature"] > 0:
        raise ValueError(
            f"num_beams={out['num_beams']} is beam search, which does not sample: "
            f"temperature must be 0, got {out['temperature']!r}"
        )
    return out


@dataclasses.dataclass
class Sampling:
    """How the next token is picked from the (constrained) distribution."""

    #: 0 = greedy (argmax); > 0 = sample from softmax(logits / temperature)
    temperature: float = 0.0
    #: keep only the k most likely ids before sampling (None = all)
    top_k: int | None = None
    #: keep the smallest set of ids whose probability reaches top_p (None = all)
    top_p: float | None = None
    #: > 1: beam search with this many beams per query (temperature 0 only)
    num_beams: int = 1
    #: beams are ranked by log probability / length ** length_penalty
    length_penalty: float = 1.0

    def __post_init__(self) -> None:
        names = ("temperature", "top_k", "top_p", "num_beams", "length_penalty")
        checked = sampling_options({name: getattr(self, name) for name in names})
        for name in names:
            setattr(self, name, checked[name])


class Prompt(NamedTuple):
    """A token sequence with its routing attributes and positions, all (T,) int64."""

    input_ids: torch.Tensor
    attributes: torch.Tensor
    positions: torch.Tensor


@dataclasses.dataclass
class GenerationOutput:
    #: per query, per segment: the generated ids (stop id included when one was emitted)
    segments: list[list[torch.Tensor]]
    #: the same layout: the probability of each id under the distribution it was drawn from
    segment_probs: list[list[torch.Tensor]]

    @property
    def tokens(self) -> list[torch.Tensor]:
        """Per query, all generated ids in order."""
        return [torch.cat(s) for s in self.segments]

    @property
    def probs(self) -> list[torch.Tensor]:
        return [torch.cat(p) for p in self.segment_probs]


class PrefilledPrefix(NamedTuple):
    """A shared prefix whose keys/values are computed (prefill_prefix), reusable across calls."""

    prompt: Prompt
    cache: KVCache


def _as_prompt(p, what: str) -> Prompt:
    try:
        ids, attrs, pos = p.input_ids, p.attributes, p.positions
    except AttributeError:
        raise TypeError(f"{what} needs input_ids, attributes and positions") from None
    ids, attrs, pos = (torch.as_tensor(t, dtype=torch.long) for t in (ids, attrs, pos))
    if ids.dim() != 1 or ids.shape != attrs.shape or ids.shape != pos.shape:
        raise ValueError(
            f"{what}: input_ids, attributes and positions must be 1-D of one length, got "
            f"{tuple(ids.shape)}, {tuple(attrs.shape)}, {tuple(pos.shape)}"
        )
    if ids.numel() == 0:
        raise ValueError(f"{what} is empty")
    return Prompt(ids, attrs, pos)


@torch.no_grad()
def prefill_prefix(model: UniclDecoder, prefix, extra_capacity: int = 0) -> PrefilledPrefix:
    """Run the shared prefix once (batch 1) and keep its keys and values."""
    prompt = _as_prompt(prefix, "prefix")
    device = model.wte.weight.device
    prompt = Prompt(*(t.to(device) for t in prompt))
    cache = model.new_cache(1, prompt.input_ids.numel() + extra_capacity)
    was_training = model.training
    model.eval()
    try:
        model(*(t[None] for t in prompt), kv_cache=cache)
    finally:
        model.train(was_training)
    return PrefilledPrefix(prompt, cache)


def filter_logits(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """Temperature, top-k and top-p applied to (B, V) logits (-inf marks removed ids)."""
    logits = logits / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < logits.shape[-1]:
        kth = logits.topk(sampling.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p is not None and sampling.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(-1)
        # drop an id when the ids before it already reach top_p (the first id always stays)
        before = probs.cumsum(-1) - probs
        drop_sorted = before >= sampling.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose(logits: torch.Tensor, sampling: Sampling, generator=None):
    """Pick one id per row from (B, V) constrained logits: (ids (B,), probabilities (B,))."""
    logits = logits.float()
    if sampling.temperature == 0:
        probs = logits.softmax(-1)  # (B, V)
        ids = probs.argmax(-1)
    else:
        probs = filter_logits(logits, sampling).softmax(-1)
        ids = torch.multinomial(probs, 1, generator=generator)[:, 0]
    return ids, probs.gather(1, ids[:, None])[:, 0]


class _Runner:
    """Feeds tokens to the model, with a KV cache or by recomputing the whole sequence."""

    def __init__(self, model: UniclDecoder, use_cache: bool, cache: KVCache | None):
        self.model = model
        self.use_cache = use_cache
        self.cache = cache
        self.seq: list[torch.Tensor] | None = None  # ids, attributes, positions, mask (B, S)

    def feed(self, ids, attrs, pos, mask) -> tuple[torch.Tensor, Votes]:
        """Append (B, T) tokens; return the final hidden state of the last column (B, D) and
        the copy head's votes there (weights (B, S), ids (B, S)) or None."""
        if self.use_cache:
            out = self.model(
                ids, attrs, pos, attention_mask=mask, kv_cache=self.cache, return_hidden=True
            )
        else:
            new = [ids, attrs, pos, mask]
            self.seq = new if self.seq is None else [torch.cat(z, 1) for z in zip(self.seq, new)]
            out = self.model(*self.seq[:3], attention_mask=self.seq[3], return_hidden=True)
        votes = out.copy_votes
        return out.hidden[:, -1], None if votes is None else (votes.weights[:, -1], votes.ids)

    def reorder(self, rows: torch.Tensor) -> None:
        """Row i continues the sequence of row rows[i] (beam search)."""
        if self.use_cache:
            self.cache.reorder(rows)
        else:
            self.seq = [t[rows] for t in self.seq]


@torch.no_grad()
def generate(
    model: UniclDecoder,
    queries,
    segments: Sequence[SegmentSpec],
    attribute_table: torch.Tensor,
    *,
    prefix=None,
    sampling: Sampling | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> GenerationOutput:
    """Generate `segments` after each query (after the shared `prefix`, if given).

    queries: a prompt (input_ids, attributes, positions: (T,) int64) or a list of them.
    attribute_table: (V,) int64, the routing attribute each id carries when generated.
    prefix: a prompt or a PrefilledPrefix shared by all queries (the demonstrations).
    Positions of generated tokens continue from each query's last position.
    `sampling.num_beams` > 1: beam search (`_beam_search`), each query's best beam.
    """
    sampling = sampling or Sampling()
    single = hasattr(queries, "input_ids")
    prompts = [
        _as_prompt(q, f"queries[{i}]") for i, q in enumerate([queries] if single else queries)
    ]
    device = model.wte.weight.device
    table = _check_request(model, prompts, segments, attribute_table).to(device)
    beams = sampling.num_beams
    if beams > 1:  # query i's beams are rows i * beams .. (i + 1) * beams - 1
        prompts = [p for p in prompts for _ in range(beams)]
    q_ids, q_attrs, q_pos, q_mask = left_padded(prompts, device)
    b, total = len(prompts), sum(seg.steps for seg in segments)
    was_training = model.training
    model.eval()
    try:
        runner = _start(model, prefix, b, q_ids.shape[1] + total, use_cache, device)
        state = _DecodeState(*runner.feed(q_ids, q_attrs, q_pos, q_mask), q_pos[:, -1] + 1)
        if beams > 1:
            return _beam_search(runner, state, segments, table, sampling)
        out_ids: list[list[torch.Tensor]] = [[] for _ in range(b)]
        out_probs: list[list[torch.Tensor]] = [[] for _ in range(b)]
        for s, seg in enumerate(segments):
            last = s == len(segments) - 1
            ids_t, probs_t, act_t = _decode_segment(
                model, runner, state, seg, table, sampling, generator, last
            )
            for i in range(b):
                out_ids[i].append(ids_t[i][act_t[i]])
                out_probs[i].append(probs_t[i][act_t[i]])
    finally:
        model.train(was_training)
    return GenerationOutput(out_ids, out_probs)


def _check_request(model, prompts, segments, attribute_table) -> torch.Tensor:
    """Check the queries, segments and attribute table against the model; the table as int64."""
    if not prompts:
        raise ValueError("queries is empty")
    if not segments:
        raise ValueError("segments is empty: nothing to generate")
    v = model.vocab_size
    table = torch.as_tensor(attribute_table, dtype=torch.long)
    if table.shape != (v,):
        raise ValueError(f"attribute_table must be (V={v},), got {tuple(table.shape)}")
    for i, seg in enumerate(segments):
        if seg.allowed.shape != (v,):
            raise ValueError(
                f"segments[{i}].allowed must be (V={v},), got {tuple(seg.allowed.shape)}"
            )
        bad = [s for s in seg.stop_ids if not 0 <= s < v]
        if bad:
            raise ValueError(f"segments[{i}].stop_ids must lie in [0, {v}), got {bad}")
    return table


def left_padded(prompts: Sequence[Prompt], device) -> tuple[torch.Tensor, ...]:
    """(ids, attributes, positions, mask), each (B, Q): every row's last prompt token is the
    last column (padding keys are masked out)."""
    b, q_len = len(prompts), max(p.input_ids.numel() for p in prompts)
    q = torch.zeros(4, b, q_len, dtype=torch.long)  # ids, attributes, positions, mask
    for i, p in enumerate(prompts):
        n = p.input_ids.numel()
        q[0, i, q_len - n :], q[1, i, q_len - n :], q[2, i, q_len - n :] = p
        q[3, i, q_len - n :] = 1
    q = q.to(device)
    return q[0], q[1], q[2], q[3].bool()


@dataclasses.dataclass
class _DecodeState:
    """Where decoding stands: the last hidden state of every row, the copy head's votes there
    (ModelConfig.copy_values = "tokens") and its next position."""

    hidden: torch.Tensor  # (B, D)
    votes: Votes
    next_pos: torch.Tensor  # (B,)

    def keep(self, fed: torch.Tensor, hidden: torch.Tensor, votes: Votes) -> None:
        """Take the new state where `fed` (B,) and keep the old one where a row fed filler."""
        self.hidden = torch.where(fed[:, None], hidden, self.hidden)
        if votes is not None:
            old = F.pad(self.votes[0], (0, votes[0].shape[1] - self.votes[0].shape[1]))
            self.votes = (torch.where(fed[:, None], votes[0], old), votes[1])

    def reorder(self, rows: torch.Tensor) -> None:
        """Row i takes the state of row rows[i] (beam search)."""
        self.hidden, self.next_pos = self.hidden[rows], self.next_pos[rows]
        if self.votes is not None:
            self.votes = (self.votes[0][rows], self.votes[1][rows])


def _decode_segment(model, runner, state, seg, table, sampling, generator, last: bool):
    """Decode one segment for every row: (ids, probabilities, active), each (B, G_s) on CPU.

    A row whose stop id was just emitted still feeds it, then idles (feeds masked filler)
    until the segment ends for all rows; the last segment stops without feeding its last
    token.
    """
    heads = _SegmentHead(model, seg, state.hidden.device)
    active = torch.ones(state.hidden.shape[0], dtype=torch.bool, device=state.hidden.device)
    ids_steps, prob_steps, act_steps = [], [], []
    for step in range(seg.steps):
        pick, prob = choose(heads.logits(state), sampling, generator)  # (B,), (B,)
        tok = heads.ids[pick]  # (B,) global ids
        ids_steps.append(tok)
        prob_steps.append(prob)
        act_steps.append(active.clone())
        fed = active.clone()
        active = active & ~heads.stops_at(tok)
        more = step + 1 < seg.steps and bool(active.any())
        if last and not more:
            break
        _feed(runner, state, seg, step, tok, fed, table)
        if not more:
            break
    return tuple(torch.stack(z, 1).cpu() for z in (ids_steps, prob_steps, act_steps))


class _SegmentHead:
    """The output head of one segment: its allowed ids, their rows and its stop ids.

    Only the allowed rows of the head are computed: a softmax over them equals the full
    softmax with every other id masked to -inf, at a fraction of the head's cost.
    """

    def __init__(self, model: UniclDecoder, seg: SegmentSpec, device):
        allowed = seg.allowed.to(device).clone()
        self.stops = torch.tensor(list(seg.stop_ids), dtype=torch.long, device=device)
        allowed[self.stops] = True
        self.ids = allowed.nonzero()[:, 0]  # (V_s,) column -> global id
        self.rows = model.head_weight.index_select(0, self.ids)  # (V_s, D)
        self.columns = torch.full_like(allowed, -1, dtype=torch.long)  # global id -> column
        self.columns[self.ids] = torch.arange(self.ids.numel(), device=device)

    def logits(self, state: _DecodeState) -> torch.Tensor:
        """(B, V_s) logits of the allowed ids at every row's last position (votes added)."""
        logits = F.linear(state.hidden, self.rows)
        if state.votes is not None:
            logits = add_votes(logits, *state.votes, columns=self.columns)
        return logits

    def stops_at(self, tok: torch.Tensor) -> torch.Tensor:
        """(B,) bool: the global ids `tok` end the segment."""
        if not self.stops.numel():
            return torch.zeros_like(tok, dtype=torch.bool)
        return torch.isin(tok, self.stops)


def _feed(runner, state: _DecodeState, seg: SegmentSpec, step: int, tok, fed, table) -> None:
    """Feed step `step`'s tokens `tok` (B,) where `fed` (B,) and masked filler elsewhere."""
    pos = state.next_pos - seg.rewind + step if seg.rewind else state.next_pos
    h, votes = runner.feed(
        torch.where(fed, tok, 0)[:, None],
        torch.where(fed, table[tok], 0)[:, None],
        torch.where(fed, pos, 0)[:, None],
        fed[:, None],
    )
    state.keep(fed, h, votes)  # rows that only fed filler keep their state
    if not seg.rewind:
        state.next_pos = state.next_pos + fed.long()


def _beam_search(runner, state, segments, table, sampling: Sampling) -> GenerationOutput:
    """Beam search over all segments; rows i * K .. (i + 1) * K - 1 are query i's K beams.

    A beam's score is the sum of its ids' log probabilities. Each step, every beam still in
    its segment offers its extensions by each allowed id, and every beam whose segment has
    ended (its stop id emitted) offers itself unchanged; of each query's offers the K best
    by score / length ** length_penalty go on (length: ids generated so far, stop ids
    included), and the rows (cache, state, history) are reordered after their parents.
    At the start only beam 0 offers, so that the K beams differ. A query's answer is its
    best beam at the end, by the same rank.
    """
    k, alpha = sampling.num_beams, sampling.length_penalty
    n = state.hidden.shape[0]
    device = state.hidden.device
    queries = torch.arange(n // k, device=device)[:, None] * k  # (B, 1) each query's row 0
    score = torch.full((n // k, k), float("-inf"), device=device)
    score[:, 0] = 0.0
    score = score.flatten()  # (n,)
    length = torch.zeros(n, device=device)
    identity = torch.arange(n, device=device)
    ids = torch.zeros(n, 0, dtype=torch.long, device=device)  # (n, steps) generated ids
    probs = torch.zeros(n, 0, device=device)  # their probabilities
    kept = torch.zeros(n, 0, dtype=torch.bool, device=device)  # False: the beam idled
    bounds = [0]
    for s, seg in enumerate(segments):
        last = s == len(segments) - 1
        heads = _SegmentHead(runner.model, seg, device)
        active = score.isfinite()  # a beam no offer filled stays idle, at -inf
        for step in range(seg.steps):
            logp = heads.logits(state).float().log_softmax(-1)  # (n, V_s)
            v = logp.shape[1]
            grows = torch.where(active[:, None], score[:, None] + logp, float("-inf"))
            stays = torch.where(active, float("-inf"), score)  # (n,)
            offers = torch.cat([grows, stays[:, None]], 1)  # (n, V_s + 1)
            lengths = torch.cat([(length + 1)[:, None].expand(n, v), length[:, None]], 1)
            rank = offers / lengths.clamp(min=1) ** alpha
            best = rank.view(n // k, k * (v + 1)).topk(k, dim=1).indices  # (B, K)
            parent = (best // (v + 1) + queries).flatten()  # (n,)
            column = (best % (v + 1)).flatten()
            score = offers.view(n // k, -1).gather(1, best).flatten()
            fed = (column < v) & score.isfinite()
            column = column.clamp(max=v - 1)
            tok = heads.ids[column]
            prob = logp[parent, column].exp()
            ids = torch.cat([ids[parent], torch.where(fed, tok, 0)[:, None]], 1)
            probs = torch.cat([probs[parent], prob[:, None]], 1)
            kept = torch.cat([kept[parent], fed[:, None]], 1)
            length = length[parent] + fed.float()
            active = fed & ~heads.stops_at(tok)
            more = step + 1 < seg.steps and bool(active.any())
            if last and not more:
                break
            if not torch.equal(parent, identity):  # the rows follow their parents
                runner.reorder(parent)
                state.reorder(parent)
            _feed(runner, state, seg, step, tok, fed, table)
            if not more:
                break
        bounds.append(ids.shape[1])
    rank = score / length.clamp(min=1) ** alpha
    rows = (rank.view(n // k, k).argmax(1) + queries[:, 0]).cpu()
    ids, probs, kept = ids.cpu(), probs.cpu(), kept.cpu()
    parts = [slice(a, z) for a, z in zip(bounds[:-1], bounds[1:])]
    out_ids = [[ids[r, p][kept[r, p]] for p in parts] for r in rows.tolist()]
    out_probs = [[probs[r, p][kept[r, p]] for p in parts] for r in rows.tolist()]
    return GenerationOutput(out_ids, out_probs)


def _start(model, prefix, batch: int, more: int, use_cache: bool, device) -> _Runner:
    """A runner positioned after the shared prefix (if any), with room for `more` tokens."""
    if prefix is None:
        cache = model.new_cache(batch, more) if use_cache else None
        return _Runner(model, use_cache, cache)
    if not isinstance(prefix, PrefilledPrefix):
        prefix = (
            prefill_prefix(model, prefix)
            if use_cache
            else PrefilledPrefix(
                Prompt(*(t.to(device) for t in _as_prompt(prefix, "prefix"))), None
            )
        )
    if prefix.cache is not None and prefix.cache.length != prefix.prompt.input_ids.numel():
        raise ValueError("PrefilledPrefix: its cache does not hold exactly its prompt")
    if use_cache:
        if prefix.cache is None:
            prefix = prefill_prefix(model, prefix.prompt)
        return _Runner(model, True, prefix.cache.expand(batch, prefix.cache.length + more))
    runner = _Runner(model, False, None)
    p = prefix.prompt
    runner.seq = [t[None].expand(batch, -1).to(device) for t in p]
    runner.seq.append(torch.ones(batch, p.input_ids.numel(), dtype=torch.bool, device=device))
    return runner
