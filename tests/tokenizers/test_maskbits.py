"""The maskbits mask tokenizer: exact codes, round trips, soft decoding, save/load, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unicl.tokenizers import TOKENIZERS, load_tokenizer
from unicl.tokenizers.maskbits import MaskBitsTokenizer


def disc(size: int = 64, r: float = 20.0, cx: float = 34.0, cy: float = 30.0) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r * r


def test_codes_are_patch_bits_on_the_image_grid():
    tok = MaskBitsTokenizer(grid=4, cells=2, size=16)
    mask = np.zeros((16, 16), bool)
    mask[0:2, 0:2] = True  # top-left cell of patch (0, 0): bit 0
    mask[4:6, 6:8] = True  # top-right cell of patch (1, 1): bit 1
    mask[14:16, 12:16] = True  # both bottom cells of patch (3, 3): bits 2 and 3
    codes = tok.encode(mask)
    assert codes.shape == (16,) and tok.vocab_size == 16 and tok.codes_per_image == 16
    expected = torch.zeros(16, dtype=torch.long)
    expected[0], expected[5], expected[15] = 1, 2, 12
    assert torch.equal(codes, expected)


@pytest.mark.parametrize("cells", [1, 2])
def test_round_trip_is_exact_on_cell_aligned_masks(cells):
    tok = MaskBitsTokenizer(grid=8, cells=cells, size=64)
    rng = np.random.default_rng(0)
    side = 8 * cells
    cellmap = rng.random((side, side)) < 0.4
    mask = np.kron(cellmap, np.ones((64 // side, 64 // side), bool)).astype(bool)
    again = tok.encode(tok.decode(tok.encode(mask)))
    assert torch.equal(again, tok.encode(mask))
    assert np.array_equal(tok.cell_map(mask)[0].numpy(), cellmap)


def test_ceiling_on_a_disc_and_batch_equals_singles():
    tok = TOKENIZERS.build("maskbits")
    masks = [disc(), disc(r=10, cx=20), disc(r=28, cy=33)]
    for m in masks:
        d = tok.decode(tok.encode(m))
        assert (d & m).sum() / (d | m).sum() > 0.8  # 4 px cells: a 20 px wide disc loses ~15 %
    batch = tok.encode_mask(masks)
    assert torch.equal(batch, torch.stack([tok.encode(m) for m in masks]))
    assert torch.equal(tok.encode_mask(np.stack(masks)), batch)


def test_soft_decoding_is_the_expected_bit():
    tok = MaskBitsTokenizer(grid=2, cells=2, size=4)
    probs = torch.zeros(4, 16)
    probs[:, 0] = 0.3  # all background
    probs[:, 15] = 0.7  # all foreground
    soft = tok.decode_soft(probs)
    assert soft.shape == (4, 4) and np.allclose(soft, 0.7)
    one_hot = tok.one_hot(tok.encode(disc(4, r=1.5, cx=2, cy=2)))
    assert np.array_equal(
        tok.decode_soft(one_hot) > 0.5, tok.decode_mask(tok.encode(disc(4, 1.5, 2, 2)))
    )


def test_save_load_round_trip(tmp_path):
    tok = MaskBitsTokenizer(grid=16, cells=2, size=128)
    tok.save(tmp_path / "m")
    again = load_tokenizer(tmp_path / "m")
    assert isinstance(again, MaskBitsTokenizer) and again.options() == tok.options()
    m = disc(128, r=40, cx=60, cy=64)
    assert torch.equal(again.encode(m), tok.encode(m))


def test_bad_input():
    with pytest.raises(ValueError, match="cells must be <= 3"):
        MaskBitsTokenizer(cells=4)
    with pytest.raises(ValueError, match="multiple of grid"):
        MaskBitsTokenizer(grid=8, cells=3, size=64)
    with pytest.raises(ValueError, match="grid must be a positive int"):
        MaskBitsTokenizer(grid=0)
    tok = MaskBitsTokenizer()
    with pytest.raises(TypeError, match="bool or uint8"):
        tok.encode(np.zeros((64, 64), np.float32))
    with pytest.raises(ValueError, match="must hold only 0 and 255"):
        tok.encode(np.ones((64, 64), np.uint8))
    with pytest.raises(ValueError, match="outside the tokenizer's range"):
        tok.decode([16] * 64)
    with pytest.raises(ValueError, match=r"expected code probabilities of shape \(64, 16\)"):
        tok.decode_soft(torch.zeros(63, 16))
