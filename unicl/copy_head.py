"""The copy head: pointer attention from the decoder's final states to earlier text tokens.

A caption's query holds its category's name in the prompt (`Category: <c_st> flower <c_ed>`);
a decoder that learned each noun as an output of its own cannot write a name it was never
trained to write. The copy head (ModelConfig.copy_head) adds, to each final hidden state, the
output rows of the earlier text tokens it attends to, so attending to a name is enough to
write it: pointer-generator copying (See et al., arXiv 1704.04368) in logit space.
docs/model.md ("Copying words from the prompt") has the measurements.

Letters: B batch, T new tokens, S keys (cached + new), D width, V embedding rows.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from unicl.kv_cache import KVCache
    from unicl.model import ModelConfig


#: added to the copy gate's logit, outside training, where a started name has a next key
FINISH_NAMES = 8.0
#: ModelConfig.copy_values: what a copied source adds (CopyHead)
COPY_VALUES = ("rows", "tokens")


@dataclasses.dataclass
class CopyVotes:
    """A copy head's votes (ModelConfig.copy_values = "tokens"): position t's logit of token
    `ids[b, s]` grows by `weights[b, t, s]` (summed over the sources holding that token)."""

    weights: torch.Tensor  # (B, T, S) gate * scale * attention, 0 where s copies nothing
    ids: torch.Tensor  # (B, S) the sources' token ids

    def rows(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flattened rows b * T + t of the votes: (weights, ids), each (R, S)."""
        b, t, s = self.weights.shape
        return self.weights.reshape(b * t, s).index_select(0, index), self.ids.index_select(
            0, torch.div(index, t, rounding_mode="floor")
        )


def add_votes(
    logits: torch.Tensor,
    weights: torch.Tensor,
    ids: torch.Tensor,
    columns: torch.Tensor | None = None,
    start: int = 0,
) -> torch.Tensor:
    """`logits` (..., C) plus copy votes (weights (..., S), ids (..., S) or (B, S) for
    logits (B, T, C)): a vote for id v lands on column `columns[v]` when a (V,) table of
    columns is given (-1: no column), else on column v - start; votes without a column in
    range are dropped. Returns a new tensor."""
    if ids.dim() < weights.dim():  # (B, S) ids of (B, T, S) weights
        ids = ids[:, None, :].expand_as(weights)
    col = columns[ids] if columns is not None else ids - start
    keep = (col >= 0) & (col < logits.shape[-1])
    w = torch.where(keep, weights, torch.zeros((), dtype=weights.dtype, device=weights.device))
    return logits.scatter_add(-1, col.clamp(0, logits.shape[-1] - 1), w.to(logits.dtype))


class CopyHead(nn.Module):
    """Pointer attention from every position to the earlier copyable tokens (ModelConfig.copy_head).

    With `copy_values: rows`, out_t = gate_t * scale * sum_j a_tj W[x_j] is added to the
    hidden state, W the output rows: token v's logit grows by
    gate_t * scale * sum_j a_tj <W[x_j], W[v]>, most for the attended tokens themselves, but
    also for every token whose row resembles theirs; the rows of words never trained as
    outputs drift together, so copying one of them lifts them all (an unseen "octagon"
    lifted "ag", "ear", "q"; docs/model.md). With `copy_values: tokens` the head votes
    instead: token v's logit grows by gate_t * scale * sum_j a_tj [x_j = v] (CopyVotes,
    added where logits are made) and nothing else moves. One head of full width; a learned
    null key (value 0) takes the attention a position does not want to give to any source,
    and the one of positions without a copyable token before them.

    With `copy_continue` the score of source j, when j - 1 is in a category name's brackets
    (`names`: `<c_st>` and the name's pieces, up to `<c_ed>`), also gains
    w_eq [x_j-1 == x_t] + w_cos cos(W[x_j-1], W[x_t]): a position whose token was just copied
    from j - 1 looks at j next, so a name of several BPE pieces is copied piece after piece,
    whatever its pieces (an induction step built in, not learned); the cosine lets training
    pair tokens that play one part (a caption's word before the noun with `<c_st>`). Only
    names continue: after " blue" a caption must not copy whatever followed " blue" in a
    demonstration ("a blue hexagon" for a cross). The key right after a source's last piece
    (`<c_ed>` after a name) is a stop key: it may be attended to and adds nothing, so a name
    copied to its end points the head at "stop" rather than back into the name (which wrote
    "trapezoidpezoidpezoid").

    Finishing names, a decoding rule: outside training, where the token just written is a
    name piece with a key after it, FINISH_NAMES is added to the gate's logit. The gate is
    learned on seen names, whose pieces the language model predicts by itself, so it stays
    shut where a grounded model expects another word, and unseen names stopped after their
    first piece ("the te hidden behind ..." for "teardrop"). As a learned term from the
    same start, trained from scratch for 150 steps, it cost the unseen names their first
    piece instead (docs/model.md).
    """

    def __init__(self, cfg: ModelConfig, names: tuple[int, int] | None = None):
        super().__init__()
        if cfg.copy_continue and names is None:
            raise ValueError(
                "model.copy_continue needs the ids of the name brackets (<c_st>, <c_ed>)"
            )
        self.names = names
        self.votes = cfg.copy_values == "tokens"
        d = cfg.d_model
        self.query = nn.Linear(d, d, bias=False)
        self.key = nn.Linear(d, d, bias=False)
        self.null_key = nn.Parameter(torch.zeros(d))
        self.gate = nn.Linear(d, 1)
        # a copied row adds about |W_v|^2 = D * 0.02^2 to its own logit at initialisation: scale
        # it to about 4 nats (times the gate's 0.5) so that copying is worth learning at once
        # (1,), not a 0-d tensor: DeepSpeed's broadcast views every parameter as bytes
        self.log_scale = nn.Parameter(torch.full((1,), math.log(4.0 / (d * 0.02**2))))
        # the continuation's weights (w_eq, w_cos) on the attention logits: with w_eq at 4 a
        # learned query still outbids it and unseen three-piece names lose their end; 16 wins
        self.cont = nn.Parameter(torch.tensor([16.0, 4.0])) if cfg.copy_continue else None

    def forward(
        self, hidden, input_ids, sources, rows, mask, key_valid, cache: KVCache | None
    ) -> tuple[torch.Tensor, CopyVotes | None]:
        """hidden (B, T, D) final states, input_ids (B, T), sources (V,) bool copyable ids,
        rows (V, D) output rows, mask the decoder's (B, 1, T, S) bool mask or None (causal),
        key_valid (B, S) bool, False on padding keys, or None (no padding).
        Returns the hidden states (with the copied rows added, `copy_values: rows`) and the
        votes (`copy_values: tokens`) or None."""
        b, t, d = hidden.shape
        keys, ids = self.key(hidden), input_ids  # (B, T, D), (B, T)
        if cache is not None:
            start, end = cache.length, cache.length + t
            cache.copy_keys[:, start:end] = keys
            cache.copy_ids[:, start:end] = input_ids
            keys, ids = cache.copy_keys[:, :end], cache.copy_ids[:, :end]  # (B, S, D), (B, S)
        s = ids.shape[1]
        if mask is None:  # plain causal attention over the T new tokens
            q_pos = torch.arange(s - t, s, device=hidden.device)
            mask = (torch.arange(s, device=hidden.device)[None, :] <= q_pos[:, None])[None, None]
        copyable = sources[ids]  # (B, S)
        keys_on = copyable
        if self.cont is not None:  # stop keys: right after a copyable token, not copyable
            after = copyable if key_valid is None else copyable & key_valid  # padding: none
            keys_on = copyable | (F.pad(after[:, :-1], (1, 0)) & ~copyable)
        allowed = mask[:, 0] & keys_on[:, None, :]  # (B, T, S)
        q = self.query(hidden)  # (B, T, D)
        scores = (q @ keys.to(q.dtype).transpose(1, 2)) / math.sqrt(d)  # (B, T, S)
        if self.cont is not None:
            # source j's previous token (j >= 1), in a name, against each new token: equal,
            # and the cosine of their rows (which training can raise between tokens that play
            # one part)
            before_ids = ids[:, :-1]  # (B, S - 1)
            same = (input_ids[:, :, None] == before_ids[:, None, :]).to(q.dtype)
            before = F.normalize(rows[before_ids].to(q.dtype), dim=-1)  # (B, S - 1, D)
            now = F.normalize(rows[input_ids].to(q.dtype), dim=-1)  # (B, T, D)
            match = self.cont[0] * same + self.cont[1] * (now @ before.transpose(1, 2))
            named = in_names(before_ids, *self.names)  # (B, S - 1)
            if key_valid is not None:  # a padding token is no source's previous token
                named = named & key_valid[:, :-1]
            scores = scores + F.pad(match * named[:, None, :], (1, 0))  # source 0: none before
        finishing = self.cont is not None and not self.training  # a decoding rule (docstring)
        if finishing:  # (B, T): the new token is a name piece whose next key is on
            continuing = (same.bool() & named[:, None, :] & allowed[:, :, 1:]).any(-1)
        scores = scores.masked_fill(~allowed, float("-inf"))
        null = (q @ self.null_key.to(q.dtype)).unsqueeze(-1) / math.sqrt(d)  # (B, T, 1)
        attn = torch.softmax(torch.cat([scores, null], dim=-1), dim=-1)[..., :s]  # (B, T, S)
        attn = attn * copyable[:, None, :]  # stop keys add nothing
        gate_logit = self.gate(hidden)  # (B, T, 1)
        if finishing:
            gate_logit = gate_logit + FINISH_NAMES * continuing[..., None].to(gate_logit.dtype)
        gate = torch.sigmoid(gate_logit) * self.log_scale.exp()  # (B, T, 1)
        if self.votes:
            return hidden, CopyVotes(gate * attn, ids)
        copied = attn @ rows[ids].to(q.dtype)  # (B, T, D)
        return hidden + gate * copied, None


def in_names(ids: torch.Tensor, opener: int, closer: int) -> torch.Tensor:
    """(B, S) bool: the tokens from a name's opening bracket up to its closing one, excluded
    (`<c_st>` name pieces, not `<c_ed>`)."""
    return (ids == opener).long().cumsum(1) - (ids == closer).long().cumsum(1) > 0
