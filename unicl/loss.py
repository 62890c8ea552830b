"""Training loss of the decoder (arXiv 2312.02520, decoder and mixture of experts):

    loss = CE(loss-weighted target tokens) + aux_loss_weight * sum over MoE layers of l_aux

CE is the loss-weighted mean over the batch's target tokens (the outputs of every in-context pair;
the sequence packer sets the weights). The vocabulary head (~52k wide) runs only on positions with
a nonzero weight, which on CPU saves most of the head's matmul. Every batch holds one task (the
paper's unmixed batches), so the trainer files `ce` under `batch.task`.

Closed spans (`closed_spans`, off by default and in the paper recipe): a target token whose id
lies in one of the given id ranges (e.g. the VQ-GAN codes of a mask) is scored by a softmax over
that range only: exactly the choice constrained decoding leaves the model at such a position, since
a mask is always h*w codes. This trains the distribution generation samples from, and replaces
the ~52k-wide head by a ~1k-wide one on most segmentation targets, which roughly halves a CPU
training step of the tiny default.

Letters: B batch, T tokens, D width, V vocabulary rows, R rows with a nonzero loss weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from unicl.copy_head import CopyVotes, add_votes


class LossOutput(NamedTuple):
    #: scalar to backpropagate: ce + aux_loss_weight * aux
    loss: torch.Tensor
    #: scalar loss-weighted cross-entropy of the target tokens
    ce: torch.Tensor
    #: scalar sum of the MoE layers' load-balancing losses (unweighted)
    aux: torch.Tensor
    #: per MoE layer, (E,) int64 kept token assignments per expert
    expert_load: list[torch.Tensor]
    #: per MoE layer, scalar assignments dropped by the capacity limit
    dropped: list[torch.Tensor]
    #: number of target tokens (nonzero loss weight)
    num_tokens: int
    #: sum of their loss weights (the CE's denominator)
    weight_sum: torch.Tensor


def compute_loss(model, batch, closed_spans: Sequence[range] = ()) -> LossOutput:
    """Loss of `model` (a UniclDecoder) on `batch` (anything with the Batch tensor fields).

    `batch.loss_weights[:, t]` weighs predicting `input_ids[:, t]` (or `batch.targets[:, t]`
    when the batch has them: parallel answers) from the tokens before t, so the hidden state at
    t - 1 predicts the token at t. Targets inside one of `closed_spans`
    (global id ranges) are scored against that range only (see the module docstring).
    """
    ids, weights = batch.input_ids, batch.loss_weights
    if tuple(weights.shape) != tuple(ids.shape):
        raise ValueError(
            f"loss_weights must have the shape of input_ids {tuple(ids.shape)}, "
            f"got {tuple(weights.shape)}"
        )
    # right padding: causal attention already keeps real tokens from seeing the padding
    out = model(ids, batch.attributes, batch.positions, return_hidden=True)
    hidden = out.hidden[:, :-1]  # (B, T-1, D) predicting tokens 1..T-1
    w = weights[:, 1:].reshape(-1).to(hidden.dtype)  # (B*(T-1),)
    rows = torch.nonzero(w, as_tuple=True)[0]  # (R,)
    # parallel answers replace some inputs by placeholders; their targets come separately
    next_tokens = ids if getattr(batch, "targets", None) is None else batch.targets  # (B, T)
    targets = next_tokens[:, 1:].reshape(-1).index_select(0, rows)  # (R,)
    w = w.index_select(0, rows)  # (R,)
    h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows)  # (R, D)
    votes = None
    if out.copy_votes is not None:  # the copy head's votes of the same rows, (R, S) each
        weights = out.copy_votes.weights[:, :-1]
        votes = CopyVotes(weights, out.copy_votes.ids).rows(rows)
    nll = _target_nll(model, h, targets, closed_spans, votes)  # (R,)
    weight_sum = w.float().sum()
    ce = (nll * w.float()).sum() / weight_sum.clamp_min(torch.finfo(torch.float32).tiny)
    aux = out.aux_loss.float()
    loss = ce + model.cfg.aux_loss_weight * aux
    return LossOutput(
        loss=loss,
        ce=ce,
        aux=aux,
        expert_load=out.expert_load,
        dropped=out.dropped,
        num_tokens=int(rows.numel()),
        weight_sum=weight_sum,
    )


def _target_nll(model, h: torch.Tensor, targets: torch.Tensor, closed_spans, votes=None):
    """-log p(target) per row: h (R, D), targets (R,) -> (R,), in fp32 even under autocast.
    `votes`: the copy head's (weights, ids), each (R, S), added to the logits, or None."""

    def voted(logits: torch.Tensor, rows: torch.Tensor | None, start: int = 0) -> torch.Tensor:
        if votes is None:
            return logits
        weights, ids = votes if rows is None else (v.index_select(0, rows) for v in votes)
        return add_votes(logits, weights, ids, start=start)

    if not closed_spans:
        return F.cross_entropy(voted(model.logits(h).float(), None), targets, reduction="none")
    nll = h.new_zeros(targets.shape, dtype=torch.float32)  # (R,)
    open_rows = torch.ones_like(targets, dtype=torch.bool)  # (R,)
    weight = model.head_weight  # (V, D)
    for span in closed_spans:
        inside = (targets >= span.start) & (targets < span.stop)  # (R,)
        rows = torch.nonzero(inside, as_tuple=True)[0]  # (R_s,)
        if rows.numel():
            logits = F.linear(h.index_select(0, rows), weight[span.start : span.stop]).float()
            logits = voted(logits, rows, span.start)
            local = targets.index_select(0, rows) - span.start  # (R_s,)
            nll = nll.index_put((rows,), F.cross_entropy(logits, local, reduction="none"))
        open_rows &= ~inside
    rows = torch.nonzero(open_rows, as_tuple=True)[0]
    if rows.numel():
        logits = voted(model.logits(h.index_select(0, rows)).float(), rows)  # (R_o, V)
        nll = nll.index_put(
            (rows,), F.cross_entropy(logits, targets.index_select(0, rows), reduction="none")
        )
    return nll
