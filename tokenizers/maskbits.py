"""The "maskbits" tokenizer: a binary mask as exact per-patch bit codes (a dedicated mask code).

A one-bit-per-pixel target does not need a 1024-code image quantizer: the image VQ-GAN spreads
binary masks over hundreds of near-synonym codes (docs/tokenizers.md, "Mask codes"), so a model
that picks the argmax code often lands on a background-looking one. This tokenizer lays the
same grid over a mask as the image tokenizer lays over its image (`grid` x `grid` tokens, one
per patch) and codes each patch as `cells` x `cells` majority bits, read row-major:

    code = sum_j bit_j * 2**j,   j = cy * cells + cx,   2**(cells**2) codes

so token (r, c) of a mask covers exactly the pixels of image token (r, c). With `cells=2`
(16 codes) a 64 px mask on an 8 x 8 grid is kept at 16 x 16 cells; decoding upsamples the cell
map bilinearly and thresholds it at 0.5, which rounds the cells' corners back into curves.

Soft decoding (`decode_soft`): given a probability per code at every position, the expected
bit of each cell is `probs @ bits` (the code -> bits table is built once), i.e. the per-cell
foreground probability under the model's distribution. Thresholding that map instead of the
argmax code's bits is what the model's uncertainty is for.

Deterministic, no weights: `options()` rebuild it exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from unicl.tokenizers.base import TOKENIZERS, Tokenizer, uint8_mask

#: largest `cells`: 3 x 3 bits = 512 codes (4 x 4 would be 65536)
MAX_CELLS = 3


def _mask_batch(masks: Any) -> tuple[np.ndarray, bool]:
    """(H, W) or (B, H, W) bool / 0-255 uint8, or a list of (H, W) -> ((B, H, W) bool, single)."""
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    if isinstance(masks, (list, tuple)):
        if not masks:
            raise ValueError("maskbits: nothing to encode (empty list)")
        arrays = [np.asarray(m.detach().cpu() if isinstance(m, torch.Tensor) else m) for m in masks]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"maskbits: masks of one batch must share a shape, got {shapes}")
        array, single = np.stack(arrays), False
    elif isinstance(masks, np.ndarray):
        array, single = (masks[None], True) if masks.ndim == 2 else (masks, False)
    else:
        raise TypeError(f"maskbits: expected (H, W) bool masks, got {type(masks).__name__}")
    if array.ndim != 3 or array.shape[1] < 1 or array.shape[2] < 1:
        raise ValueError(f"maskbits: a mask must have shape (H, W), got {array.shape[1:]}")
    if array.dtype == np.uint8:
        array = uint8_mask(array, "maskbits")
    elif array.dtype != np.bool_:
        raise TypeError(f"maskbits: masks must be bool or uint8 (0/255), got dtype {array.dtype}")
    return array, single


@TOKENIZERS.register("maskbits")
class MaskBitsTokenizer(Tokenizer):
    """Binary masks -> `grid` x `grid` codes of `cells` x `cells` majority bits each.

    Options: `grid` (tokens per side; match the image tokenizer: 8 for the tiny 64 px VQ-GAN,
    16 for the paper's 256 px one), `cells` (bits per patch side: 1, 2 or 3), `size` (the side
    masks are decoded to; any multiple of `grid * cells`).
    """

    name = "maskbits"
    modality = "mask"

    def __init__(self, grid: int = 8, cells: int = 2, size: int = 64) -> None:
        for key, value in (("grid", grid), ("cells", cells), ("size", size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"maskbits: {key} must be a positive int, got {value!r}")
        if cells > MAX_CELLS:
            raise ValueError(f"maskbits: cells must be <= {MAX_CELLS} (2**(cells**2) codes)")
        if size % (grid * cells):
            raise ValueError(
                f"maskbits: size ({size}) must be a multiple of grid * cells ({grid * cells})"
            )
        self.grid, self.cells, self.size = grid, cells, size
        bits = (torch.arange(2 ** (cells * cells))[:, None] >> torch.arange(cells * cells)) & 1
        #: (K, cells*cells) float: the bits of every code, row-major within the patch
        self.bits = bits.float()
        self._weights = 2 ** torch.arange(cells * cells)  # (cells*cells,)

    @property
    def vocab_size(self) -> int:
        return 2 ** (self.cells * self.cells)

    @property
    def codes_per_image(self) -> int:
        return self.grid * self.grid

    def options(self) -> dict[str, Any]:
        return {"grid": self.grid, "cells": self.cells, "size": self.size}

    def code_vectors(self) -> torch.Tensor:
        """(K, cells*cells) each code's bits: codes that share cells share features."""
        return self.bits.clone()

    # ---- encoding -------------------------------------------------------- #

    def cell_map(self, masks: Any) -> torch.Tensor:
        """Masks -> (B, G*c, G*c) bool cells: area fraction of foreground >= 0.5."""
        array, _ = _mask_batch(masks)
        side = self.grid * self.cells
        x = torch.from_numpy(array).float()[:, None]  # (B, 1, H, W)
        frac = (
            F.adaptive_avg_pool2d(x, side)
            if x.shape[-1] % side or x.shape[-2] % side
            else (F.avg_pool2d(x, (x.shape[-2] // side, x.shape[-1] // side)))
        )
        return frac[:, 0] >= 0.5  # (B, G*c, G*c)

    def encode_mask(self, masks: Any) -> torch.Tensor:
        """Mask(s) (H, W) -> (G*G,) codes, or (B, G*G) for a batch."""
        _, single = _mask_batch(masks)
        g, c = self.grid, self.cells
        cells = self.cell_map(masks).long()  # (B, G*c, G*c)
        b = cells.shape[0]
        patches = cells.view(b, g, c, g, c).permute(0, 1, 3, 2, 4).reshape(b, g * g, c * c)
        codes = (patches * self._weights).sum(-1)  # (B, G*G)
        return codes[0] if single else codes

    def encode(self, payload: Any) -> torch.Tensor:
        """A mask (H, W) -> (G*G,) codes (masks are this tokenizer's only payload)."""
        _, single = _mask_batch(payload)
        if not single:
            raise ValueError("maskbits: encode takes one (H, W) mask; use encode_mask for a batch")
        return self.encode_mask(payload)

    def encode_batch(self, payloads: Sequence[Any]) -> list[torch.Tensor]:
        return list(self.encode_mask(list(payloads)))

    # ---- decoding -------------------------------------------------------- #

    def _probs(self, probs: Any) -> tuple[torch.Tensor, bool]:
        p = torch.as_tensor(probs, dtype=torch.float32).detach().cpu()
        single = p.dim() == 2
        if single:
            p = p[None]
        n, k = self.codes_per_image, self.vocab_size
        if p.dim() != 3 or tuple(p.shape[1:]) != (n, k):
            raise ValueError(
                f"maskbits: expected code probabilities of shape ({n}, {k}) or (B, {n}, {k}), "
                f"got {tuple(p.shape)}"
            )
        return p, single

    def decode_soft(self, probs: Any, size: int | None = None) -> np.ndarray:
        """(G*G, K) code probabilities -> (size, size) float32 foreground probability.

        Each cell's probability is its expected bit, `probs @ bits`; the cell map is
        upsampled bilinearly (half-pixel centres) to `size` (default: the tokenizer's).
        A batch (B, G*G, K) gives (B, size, size).
        """
        p, single = self._probs(probs)
        g, c = self.grid, self.cells
        b = p.shape[0]
        cells = (p @ self.bits).view(b, g, g, c, c).permute(0, 1, 3, 2, 4)  # (B, G, c, G, c)
        cells = cells.reshape(b, 1, g * c, g * c)
        side = size or self.size
        soft = F.interpolate(cells, size=(side, side), mode="bilinear", align_corners=False)
        out = soft[:, 0].clamp(0, 1).numpy()
        return out[0] if single else out

    def one_hot(self, ids: Any) -> torch.Tensor:
        """Codes (G*G,) or (B, G*G) -> their one-hot probabilities (..., K)."""
        ids = torch.as_tensor(ids)
        flat = self.check_ids(ids)
        n = self.codes_per_image
        if flat.numel() % n:
            raise ValueError(f"maskbits: expected {n} codes per mask, got {tuple(ids.shape)}")
        return F.one_hot(flat.view(-1, n), self.vocab_size).float().view(*ids.shape, -1)

    def decode_mask(self, ids: Any, size: int | None = None) -> np.ndarray:
        """Codes (G*G,) -> (size, size) bool; a batch (B, G*G) -> (B, size, size)."""
        return self.decode_soft(self.one_hot(ids), size) > 0.5

    def decode(self, ids: Any) -> np.ndarray:
        """Codes -> the bool mask they encode (see `decode_mask`)."""
        return self.decode_mask(ids)
