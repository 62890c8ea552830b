"""The decoder's key/value cache for incremental decoding (unicl/generate.py).

Every layer's keys and values are preallocated for `capacity` tokens, so that a
decoding step writes its new keys after the cached ones instead of concatenating
(unicl/blocks.py `CausalSelfAttention`). A one-row cache of a shared prompt prefix
`expand`s to one row per sampled answer.

Letters: B rows (batch), H heads, Dh = D / H head width, L layers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from unicl.model import ModelConfig


class KVCache:
    """Preallocated keys/values of every layer for incremental decoding (inference only).

    keys[l], values[l]: (B, H, capacity, Dh); valid: (B, capacity) bool, False on padding keys
    (e.g. left-padded queries), so that the other rows of a batch can keep decoding.
    `length` keys are filled; a forward with `kv_cache` appends its T tokens after them.
    With a copy head (ModelConfig.copy_head): copy_keys (B, capacity, D) and copy_ids
    (B, capacity) int64, the copy head's keys and the tokens they belong to.
    """

    def __init__(self, keys, values, valid, length: int = 0, copy=None):
        self.keys: list[torch.Tensor] = keys
        self.values: list[torch.Tensor] = values
        self.valid: torch.Tensor = valid
        self.length = length
        self.copy_keys, self.copy_ids = copy or (None, None)

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, capacity: int, dtype, device) -> KVCache:
        head = cfg.d_model // cfg.n_head
        shape = (batch, cfg.n_head, capacity, head)
        keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)]
        values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)]
        valid = torch.zeros(batch, capacity, dtype=torch.bool, device=device)
        copy = None
        if cfg.copy_head:
            copy = (
                torch.zeros(batch, capacity, cfg.d_model, dtype=dtype, device=device),
                torch.zeros(batch, capacity, dtype=torch.long, device=device),
            )
        return cls(keys, values, valid, 0, copy)

    @property
    def batch(self) -> int:
        return self.valid.shape[0]

    @property
    def capacity(self) -> int:
        return self.valid.shape[1]

    def expand(self, batch: int, capacity: int | None = None) -> KVCache:
        """A new cache of `batch` rows, each a copy of this one-row cache (a shared prefix)."""
        if self.batch != 1:
            raise ValueError(f"only a one-row cache can be expanded, this one has {self.batch}")
        capacity = self.capacity if capacity is None else capacity
        if capacity < self.length:
            raise ValueError(f"capacity {capacity} < cached length {self.length}")
        n = self.length

        def grow(t: torch.Tensor) -> torch.Tensor:
            out = t.new_zeros(batch, t.shape[1], capacity, t.shape[3])  # (B, H, cap, Dh)
            out[:, :, :n] = t[:, :, :n]
            return out

        def grow_rows(t: torch.Tensor) -> torch.Tensor:
            out = t.new_zeros(batch, capacity, *t.shape[2:])  # (B, cap[, D])
            out[:, :n] = t[:, :n]
            return out

        copy = None
        if self.copy_keys is not None:
            copy = (grow_rows(self.copy_keys), grow_rows(self.copy_ids))
        keys, values = [grow(k) for k in self.keys], [grow(v) for v in self.values]
        return KVCache(keys, values, grow_rows(self.valid), n, copy)

    def reorder(self, rows: torch.Tensor) -> None:
        """Row i takes the keys and values of row rows[i] (beam search), in place."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        self.valid = self.valid.index_select(0, rows)
        if self.copy_keys is not None:
            self.copy_keys = self.copy_keys.index_select(0, rows)
            self.copy_ids = self.copy_ids.index_select(0, rows)
