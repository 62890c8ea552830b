"""The "bins" tokenizer: [0, 1] <-> 1001 tokens, boxes as 4 ids, range rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unicl.tokenizers import build_tokenizer, load_tokenizer
from unicl.tokenizers.bins import BinsTokenizer


@pytest.fixture()
def bins() -> BinsTokenizer:
    return build_tokenizer({"name": "bins"})


def test_round_trip_within_half_a_thousandth(bins):
    values = np.random.default_rng(0).random(10_000)
    back = bins.decode(bins.encode(values)).numpy()
    assert np.abs(back - values).max() <= 0.0005 + 1e-12
    assert bins.vocab_size == 1001


def test_box_is_four_ids_and_edges(bins):
    box = (0.0, 0.1234, 0.5, 1.0)
    ids = bins.encode(box)
    assert ids.dtype == torch.int64 and ids.tolist() == [0, 123, 500, 1000]
    assert bins.decode(ids).tolist() == [0.0, 0.123, 0.5, 1.0]
    assert bins.encode(0.25).tolist() == [250]
    assert bins.token_name(250) == "<bin_250>"
    assert bins.encode(torch.tensor([0.0016])).tolist() == [2]


def test_tiny_float_overshoot_is_clamped(bins):
    # e.g. x / width computed in float32 for x == width
    assert bins.encode([1.0 + 1e-7, -1e-7]).tolist() == [1000, 0]


@pytest.mark.parametrize("bad", [[1.01], [-0.2], [float("nan")], [float("inf")], [0.5, 2.0]])
def test_out_of_range_is_error(bins, bad):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bins.encode(bad)


def test_bad_payloads(bins):
    with pytest.raises(TypeError):
        bins.encode("0.5")
    with pytest.raises(TypeError):
        bins.encode([object()])
    with pytest.raises(ValueError, match="empty"):
        bins.encode([])
    with pytest.raises(ValueError, match="1-D"):
        bins.encode([[0.1, 0.2]])
    with pytest.raises(ValueError, match="outside"):
        bins.decode([1001])


def test_options_and_save(tmp_path):
    tok = BinsTokenizer(n_bins=101)
    assert tok.encode(0.555).tolist() == [56]
    again = load_tokenizer(tok.save(tmp_path))
    assert again.vocab_size == 101
    with pytest.raises(ValueError, match="n_bins"):
        BinsTokenizer(n_bins=1)
