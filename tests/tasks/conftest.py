"""Shared fixtures of the task tests: a deterministic stand-in for the VQ-GAN."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from unicl.tokenizers import Tokenizer


class CellTokenizer(Tokenizer):
    """Test image tokenizer: grid x grid cells, code = mean grey level // 4 (64 codes)."""

    name: ClassVar[str] = "vqgan"
    modality: ClassVar[str] = "image"

    def __init__(self, grid: int = 16) -> None:
        self.grid = grid

    @property
    def vocab_size(self) -> int:
        return 64

    @property
    def codes_per_image(self) -> int:
        return self.grid**2

    def encode(self, payload: Any) -> torch.Tensor:
        img = np.asarray(payload, dtype=np.float64)
        img = img.mean(axis=2) if img.ndim == 3 else img
        g, s = self.grid, img.shape[0] // self.grid
        cells = img[: g * s, : g * s].reshape(g, s, g, s).mean(axis=(1, 3))
        return torch.as_tensor((cells // 4).astype(np.int64).reshape(-1))

    def encode_mask(self, mask: Any) -> torch.Tensor:
        return self.encode(np.asarray(mask, dtype=np.uint8) * 255)

    def decode(self, ids: Any) -> np.ndarray:
        return (self.check_ids(ids).numpy().reshape(self.grid, self.grid) * 4 + 2).astype(np.uint8)

    def decode_mask(self, ids: Any) -> np.ndarray:
        return self.decode(ids) > 127

    def options(self) -> dict[str, Any]:
        return {"grid": self.grid}


@pytest.fixture(scope="session")
def cell_tokenizer():
    """The CellTokenizer class: `cell_tokenizer(grid=8)` is a 64-code "vqgan" of 8 x 8 cells."""
    return CellTokenizer
