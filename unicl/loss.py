"""Training loss of the decoder (PAPER.md "Decoder", "Mixture of experts"):

    loss = CE(loss-weighted target tokens) + aux_loss_weight * sum over MoE layers of l_aux

CE is the loss-weighted mean over the batch's target tokens (the outputs of every in-context pair;
the sequence packer sets the weights). The vocabulary head (~52k wide) runs only on positions with
a nonzero weight, which on CPU saves most of the head's matmul. Every batch holds one task (the
paper's unmixed batches), so the trainer files `ce` under `batch.task`.

Letters: B batch, T tokens, D width, V vocabulary rows, R rows with a nonzero loss weight.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


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


def compute_loss(model, batch) -> LossOutput:
    """Loss of `model` (a UniclDecoder) on `batch` (anything with the Batch tensor fields).

    `batch.loss_weights[:, t]` weighs predicting `input_ids[:, t]` from the tokens before t, so
    the hidden state at t - 1 predicts the token at t.
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
    targets = ids[:, 1:].reshape(-1).index_select(0, rows)  # (R,)
    w = w.index_select(0, rows)  # (R,)
    h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows)  # (R, D)
    logits = model.logits(h).float()  # (R, V) the loss in fp32 even under autocast
    nll = F.cross_entropy(logits, targets, reduction="none")  # (R,)
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
