"""The "bins" tokenizer: numbers in [0, 1] as one of 1001 tokens `<bin_0>..<bin_1000>`.

Captioning in the paper (arXiv 2312.02520): box coordinates are normalised by
the image size, rounded to 3 decimals and written as Pix2Seq-style bin tokens,
so a box (x1, y1, x2, y2) becomes 4 ids. A value v maps to bin
round(v * (n_bins - 1)) and a bin i back to i / (n_bins - 1); with 1001 bins the
round trip is exact to 3 decimals (error <= 0.0005).

Range rule: values must lie in [0, 1]. Values within `tolerance` (1e-6) outside
it, which normalising a pixel coordinate by the image size can produce through
float rounding, are clamped; anything further out, NaN or infinite is a
ValueError naming the value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from unicl.tokenizers.base import TOKENIZERS, Tokenizer


@TOKENIZERS.register("bins")
class BinsTokenizer(Tokenizer):
    """Uniform quantisation of [0, 1] into `n_bins` tokens (default 1001 = 3 decimals)."""

    name = "bins"
    modality = "number"

    def __init__(self, n_bins: int = 1001, tolerance: float = 1e-6) -> None:
        if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 2:
            raise ValueError(f"bins: n_bins must be an int >= 2, got {n_bins!r}")
        if not 0.0 <= tolerance < 0.5 / (n_bins - 1):
            raise ValueError(f"bins: tolerance must lie in [0, half a bin), got {tolerance!r}")
        self.n_bins = n_bins
        self.tolerance = float(tolerance)

    @property
    def vocab_size(self) -> int:
        return self.n_bins

    def token_name(self, index: int) -> str:
        """The printable name of local id `index`, e.g. `<bin_250>`."""
        return f"<bin_{int(self.check_ids([index])[0])}>"

    def encode(self, payload: float | Sequence[float] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """A number or a 1-D sequence of numbers in [0, 1] -> int64 ids of the same length."""
        if isinstance(payload, (str, bytes)):
            raise TypeError(f"bins: expected numbers in [0, 1], got {type(payload).__name__}")
        try:
            values = torch.as_tensor(np.asarray(payload, dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise TypeError(f"bins: expected numbers in [0, 1], got {payload!r}") from err
        if values.dim() > 1:
            raise ValueError(
                f"bins: expected a number or a 1-D sequence, got shape {tuple(values.shape)}"
            )
        values = values.reshape(-1)  # (n,)
        if values.numel() == 0:
            raise ValueError("bins: nothing to encode (empty sequence)")
        tol = self.tolerance
        bad = ~torch.isfinite(values) | (values < -tol) | (values > 1 + tol)
        if bad.any():
            raise ValueError(
                f"bins: values must lie in [0, 1] (normalise coordinates by the image size); "
                f"got {values[bad][:5].tolist()}"
            )
        values = values.clamp(0.0, 1.0)
        return torch.round(values * (self.n_bins - 1)).long()  # (n,)

    def decode(self, ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Ids -> float64 values i / (n_bins - 1), shape (n,)."""
        return self.check_ids(ids).double() / (self.n_bins - 1)

    def options(self) -> dict[str, Any]:
        return {"n_bins": self.n_bins, "tolerance": self.tolerance}
