"""Golden tests of the sequence packer: exact layout, lengths, loss weights, attributes."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from unicl.attributes import num_attributes
from unicl.batch import collate
from unicl.packer import Packer
from unicl.tasks.prompt import Episode, Segment
from unicl.tokenizers import TOKENIZERS, Tokenizer
from unicl.tokenizers.bins import BinsTokenizer
from unicl.tokenizers.gpt2 import GPT2Tokenizer
from unicl.vocab import Vocabulary

from .packing_oracle import unpack


class GridImageTokenizer(Tokenizer):
    """A test image tokenizer: g x g cells, one code per cell = its mean grey level / 4."""

    name: ClassVar[str] = "seqtest_image"
    modality: ClassVar[str] = "image"

    def __init__(self, grid: int = 2) -> None:
        self.grid = grid

    @property
    def vocab_size(self) -> int:
        return 64

    def encode(self, payload: Any) -> torch.Tensor:
        img = np.asarray(payload, dtype=np.float64)
        if img.ndim == 3:
            img = img.mean(axis=2)
        h, w = img.shape
        g = self.grid
        cells = img[: h // g * g, : w // g * g].reshape(g, h // g, g, w // g).mean(axis=(1, 3))
        return torch.as_tensor(np.clip(cells // 4, 0, 63).astype(np.int64).reshape(-1))

    def encode_mask(self, mask: Any) -> torch.Tensor:
        return self.encode(np.asarray(mask, dtype=np.uint8) * 255)

    def decode(self, ids):
        ids = self.check_ids(ids).reshape(self.grid, self.grid).numpy()
        return (ids * 4 + 2).astype(np.uint8)

    def options(self) -> dict[str, Any]:
        return {"grid": self.grid}


if "seqtest_image" not in TOKENIZERS:
    TOKENIZERS.register("seqtest_image")(GridImageTokenizer)


@pytest.fixture(scope="module")
def gpt2():
    return GPT2Tokenizer()


def make_vocab(gpt2, grid: int = 2) -> Vocabulary:
    return Vocabulary([gpt2, GridImageTokenizer(grid), BinsTokenizer()])


def seg_pair(value: int, size: int = 8) -> list[Segment]:
    image = np.full((size, size, 3), value, dtype=np.uint8)
    mask = np.zeros((size, size), dtype=bool)
    mask[: size // 2] = True
    return [
        Segment("seqtest_image", image, "input"),
        Segment("seqtest_image", mask, "output", kind="mask"),
    ]


def cap_pair(value: int, caption: str, size: int = 8) -> list[Segment]:
    image = np.full((size, size, 3), value, dtype=np.uint8)
    return [
        Segment("seqtest_image", image, "input"),
        Segment("gpt2", "Category:", "output"),
        Segment("special", "<c_st>", "output"),
        Segment("gpt2", " star", "output"),
        Segment("special", "<c_ed>", "output"),
        Segment("gpt2", ". Bboxes:", "output"),
        Segment("special", "<b_st>", "output"),
        Segment("bins", [0.1, 0.2, 0.5, 0.75], "output"),
        Segment("special", "<b_ed>", "output"),
        Segment("gpt2", ". Caption:", "output"),
        Segment("gpt2", f" {caption}", "output"),
    ]


TASKS = ["segmentation", "captioning"]


def test_segmentation_golden_layout(gpt2):
    vocab = make_vocab(gpt2, grid=2)
    packer = Packer(vocab, TASKS)
    ep = Episode("segmentation", "star", [seg_pair(40), seg_pair(200)])
    p = packer.pack(ep)
    img = vocab.ranges["seqtest_image"].start
    boi, eoc = vocab["[BOI]"], vocab["[EOC]"]
    m = [img + 63] * 2 + [img + 0] * 2  # top half white, bottom half black
    expected = (
        [boi] + [img + 10] * 4 + [boi] + m + [eoc] + [boi] + [img + 50] * 4 + [boi] + m + [eoc]
    )
    assert p.input_ids.tolist() == expected
    assert p.positions.tolist() == list(range(22))
    assert p.pair_starts == [0, 11]
    # loss on the mask, the [BOI] that opens it and the [EOC] that closes the pair
    w = [0.0] * 5 + [1.0] * 6
    assert p.loss_weights.tolist() == w + w
    # segmentation is task 1 of sorted(["captioning", "segmentation"]); spans gpt2,img,bins,special
    a_in_img, a_out_img = (1 * 4 + 1) * 2, (1 * 4 + 1) * 2 + 1
    a_in_sp, a_out_sp = (1 * 4 + 3) * 2, (1 * 4 + 3) * 2 + 1
    row = [a_in_sp] + [a_in_img] * 4 + [a_out_sp] + [a_out_img] * 4 + [a_out_sp]
    assert p.attributes.tolist() == row + row
    # generation: the prompt ends with the [BOI] that opens the query's mask
    assert p.prefix_length == 17 and p.input_ids[p.prefix_length - 1] == boi
    assert p.target_ids.tolist() == m + [eoc]
    steps = p.generation
    assert [(s.spans, s.length, s.stop) for s in steps] == [
        (("seqtest_image",), 4, None),
        ((), 1, None),
    ]
    assert steps[1].tokens == ("[EOC]",)
    allowed = steps[0].allowed_mask(vocab)
    assert allowed.sum() == 64 and allowed[img] and not allowed[eoc]


def test_paper_length_2060():
    vocab = Vocabulary([GridImageTokenizer(grid=16), BinsTokenizer()])
    ep = Episode("segmentation", "dog", [seg_pair(v, size=32) for v in (10, 60, 110, 160)])
    p = Packer(vocab, ["segmentation"], max_positions=2060).pack(ep)
    assert len(p) == 2060
    assert p.pair_starts == [0, 515, 1030, 1545]
    assert p.prefix_length == 1545 + 258 and len(p.target_ids) == 257
    # one more demonstration does not fit: the error gives the budget and the fix
    with pytest.raises(ValueError, match=r"2575 tokens.*2060 positions.*at most 3 demonstrations"):
        Packer(vocab, ["segmentation"], max_positions=2060).pack(
            Episode("segmentation", "dog", [seg_pair(v, size=32) for v in range(5)])
        )


def test_captioning_layout_and_padding(gpt2):
    vocab = make_vocab(gpt2, grid=6)  # 36 codes: image pair = 2 * 37 + 1 = 75 tokens
    packer = Packer(vocab, TASKS, input_image_weight={"captioning": 0.5})
    ep = Episode(
        "captioning",
        "star",
        [cap_pair(40, "a red star"), cap_pair(80, "a blue star")],
        pad_pairs=True,
        generate_from=10,
    )
    p = packer.pack(ep)
    assert len(p) == 150 and p.pair_starts == [0, 75]
    g = vocab.ranges["gpt2"].start
    b = vocab.ranges["bins"].start

    def text(s):
        return [g + i for i in gpt2.encode(s).tolist()]

    caption_part = (
        [vocab["[BOT]"]]
        + text("Category:")
        + [vocab["<c_st>"]]
        + text(" star")
        + [vocab["<c_ed>"]]
        + text(". Bboxes:")
        + [vocab["<b_st>"]]
        + [b + 100, b + 200, b + 500, b + 750]
        + [vocab["<b_ed>"]]
        + text(". Caption:")
        + text(" a red star")
        + [vocab["[EOC]"]]
    )
    first = p.input_ids[:75].tolist()
    assert first[:37] == [vocab["[BOI]"]] + [vocab.ranges["seqtest_image"].start + 10] * 36
    assert first[37 : 37 + len(caption_part)] == caption_part
    n_pad = 75 - 37 - len(caption_part)
    assert n_pad > 0 and first[37 + len(caption_part) :] == [vocab.pad_id] * n_pad
    # loss: 0.5 on input image codes (not their [BOI], not at t=0), 1 on the text, 0 on padding
    w = p.loss_weights[:75].tolist()
    assert w[0] == 0.0 and w[1:37] == [0.5] * 36
    assert w[37 : 37 + len(caption_part)] == [1.0] * len(caption_part)
    assert w[37 + len(caption_part) :] == [0.0] * n_pad
    assert p.loss_weights[75] == 0.0 and p.loss_weights[76] == 0.5
    # generation: the prompt ends after "Caption:"; the answer is the caption and [EOC]
    assert vocab.decode("gpt2", p.input_ids[p.prefix_length - 3 : p.prefix_length]).endswith(
        "Caption:"
    )
    assert p.target_ids.tolist() == text(" a blue star") + [vocab["[EOC]"]]
    (step,) = p.generation
    assert step.spans == ("gpt2",) and step.stop == "[EOC]"
    assert step.max_length == len(p) - p.prefix_length
    mask = step.allowed_mask(vocab)
    assert mask[g] and mask[vocab["[EOC]"]] and not mask[b] and not mask[vocab["[BOI]"]]


def test_caption_longer_than_image_pair_is_an_error(gpt2):
    vocab = make_vocab(gpt2, grid=2)  # image pair of 11 tokens: no room for the template
    ep = Episode("captioning", "star", [cap_pair(1, "a star")], pad_pairs=True)
    with pytest.raises(ValueError, match="longer than the image-pair length 11"):
        Packer(vocab, TASKS).pack(ep)


def test_category_prefix_and_zero_shot(gpt2):
    vocab = make_vocab(gpt2)
    prefix = [
        Segment("gpt2", "Category:"),
        Segment("special", "<c_st>"),
        Segment("gpt2", " star"),
        Segment("special", "<c_ed>"),
    ]
    p = Packer(vocab, TASKS).pack(Episode("segmentation", "star", [seg_pair(9)], prefix=prefix))
    g = vocab.ranges["gpt2"].start
    expected_prefix = (
        [vocab["[BOT]"]]
        + [g + i for i in gpt2.encode("Category:").tolist()]
        + [vocab["<c_st>"], g + gpt2.encode(" star").tolist()[0], vocab["<c_ed>"]]
    )
    assert p.input_ids[: p.pair_starts[0]].tolist() == expected_prefix
    assert p.loss_weights[: p.pair_starts[0]].sum() == 0  # the prefix is input
    assert len(p) == len(expected_prefix) + 11


def test_unpack_inverts_pack(gpt2):
    vocab = make_vocab(gpt2, grid=6)
    packer = Packer(vocab, TASKS)
    for ep in (
        Episode("segmentation", "star", [seg_pair(3), seg_pair(100), seg_pair(250)]),
        Episode(
            "captioning",
            "star",
            [cap_pair(7, "x"), cap_pair(9, "y z")],
            pad_pairs=True,
            generate_from=10,
        ),
    ):
        p = packer.pack(ep)
        back = unpack(packer, p)
        again = packer.pack(back)
        for field in ("input_ids", "attributes", "positions", "loss_weights"):
            assert torch.equal(getattr(p, field), getattr(again, field)), field
        assert again.prefix_length == p.prefix_length and again.pair_starts == p.pair_starts
        assert back.shots == ep.shots
        assert [s.modality for s in back.query] == [s.modality for s in unpack(packer, again).query]
    caption = back.query
    assert caption[-1].payload == " y z" and caption[-2].payload == ". Caption:"
    assert [s.payload for s in caption if s.modality == "special"] == [
        "<c_st>",
        "<c_ed>",
        "<b_st>",
        "<b_ed>",
    ]
    box = next(s for s in caption if s.modality == "bins").payload
    assert torch.allclose(box, torch.tensor([0.1, 0.2, 0.5, 0.75], dtype=box.dtype))
    assert back.generate_from == len(caption) - 1


def test_attributes_table_and_generation_table(gpt2):
    vocab = make_vocab(gpt2)
    packer = Packer(vocab, ["segmentation", "captioning"])
    assert num_attributes(vocab, TASKS) == packer.num_attributes == 2 * 4 * 2
    assert packer.table.describe(0) == ("captioning", "gpt2", "input")
    assert packer.table.describe(15) == ("segmentation", "special", "output")
    table = packer.generation_attribute_table("segmentation")
    assert table.shape == (vocab.embedding_size,) and table.dtype == torch.int64
    assert table[vocab.ranges["seqtest_image"].start] == (1 * 4 + 1) * 2 + 1
    assert table[vocab["[EOC]"]] == (1 * 4 + 3) * 2 + 1
    assert table[len(vocab) :].eq((1 * 4 + 3) * 2 + 1).all()  # embedding padding rows
    assert int(packer.generation_attribute_table("captioning", "input")[0]) == 0
    with pytest.raises(ValueError, match="configured tasks: captioning, segmentation"):
        packer.generation_attribute_table("detection")


def test_collate_pads_right_and_checks_tasks(gpt2):
    vocab = make_vocab(gpt2)
    packer = Packer(vocab, TASKS)
    short = packer.pack(Episode("segmentation", "a", [seg_pair(1)]))
    long = packer.pack(Episode("segmentation", "a", [seg_pair(1), seg_pair(2)]))
    batch = collate([short, long])
    assert batch.input_ids.shape == (2, 22) and batch.task == "segmentation"
    assert batch.attention_mask[0].tolist() == [True] * 11 + [False] * 11
    assert batch.input_ids[0, 11:].eq(vocab.pad_id).all()
    assert batch.loss_weights[0, 11:].eq(0).all()
    assert batch.attributes.max() < packer.num_attributes
    assert torch.equal(batch.input_ids[1], long.input_ids)
    assert collate([short], pad_to=16).input_ids.shape == (1, 16)
    with pytest.raises(ValueError, match="shorter than the longest"):
        collate([long], pad_to=16)
    cap = packer.pack(Episode("captioning", "a", [seg_pair(1)]))
    with pytest.raises(ValueError, match="one task"):
        collate([short, cap])


def test_bad_segments_are_named(gpt2):
    packer = Packer(make_vocab(gpt2), TASKS)
    with pytest.raises(ValueError, match="'nope' is not a configured tokenizer"):
        packer.pack(Episode("segmentation", "a", [[Segment("nope", 1, "output")]]))
    with pytest.raises(ValueError, match="no encode_polygon"):
        packer.pack(
            Episode("segmentation", "a", [[Segment("seqtest_image", 1, "output", kind="polygon")]])
        )
    with pytest.raises(ValueError, match="no output segment"):
        packer.pack(Episode("segmentation", "a", [[Segment("gpt2", "hi")]]))


def test_aligned_positions(gpt2):
    vocab = make_vocab(gpt2, grid=2)
    packer = Packer(vocab, TASKS)
    pairs = [seg_pair(40), seg_pair(200)]
    plain = packer.pack(Episode("segmentation", "star", pairs))
    p = packer.pack(Episode("segmentation", "star", pairs, aligned_positions=True))
    # mask token (r, c) takes the position of image token (r, c) and uses up none of its own
    assert p.positions.tolist() == [0, 1, 2, 3, 4, 5, 1, 2, 3, 4, 6] + [
        7,
        8,
        9,
        10,
        11,
        12,
        8,
        9,
        10,
        11,
        13,
    ]
    assert torch.equal(p.input_ids, plain.input_ids) and p.targets is None


def test_parallel_answer_layout_targets_and_weights(gpt2):
    vocab = make_vocab(gpt2, grid=2)
    packer = Packer(vocab, TASKS)
    pairs = [seg_pair(40), seg_pair(200)]
    p = packer.pack(Episode("segmentation", "star", pairs, parallel=True, aligned_positions=True))
    img = vocab.ranges["seqtest_image"].start
    boi, eoc = vocab["[BOI]"], vocab["[EOC]"]
    m = [img + 63] * 2 + [img + 0] * 2
    # every pair: [BOI] image [BOI] placeholders (the image's codes) [BOI] true mask [EOC]
    first = [boi] + [img + 10] * 4 + [boi] + [img + 10] * 4 + [boi] + m + [eoc]
    query = [boi] + [img + 50] * 4 + [boi] + [img + 50] * 4 + [boi] + m + [eoc]
    assert p.input_ids.tolist() == first + query
    row = [0, 1, 2, 3, 4, 5, 1, 2, 3, 4, 6, 1, 2, 3, 4, 7]
    assert p.positions.tolist() == row + [r + 8 for r in row]
    # the query's placeholders are the answer: the prompt ends before them
    assert p.parallel_span == (22, 4) and p.prefix_length == 22
    # hidden state at placeholder i predicts mask code i (targets shifted by one), in every pair
    for b in (6, 22):
        assert p.next_tokens[b + 1 : b + 5].tolist() == m
        assert p.loss_weights[b : b + 5].tolist() == [0.0] + [1.0] * 4
        assert p.loss_weights[b + 5 : b + 9].tolist() == [0.0] * 4  # the given mask: no loss
    # placeholders carry the mask span's output attribute, the given mask its input attribute
    a_out_img, a_in_img = (1 * 4 + 1) * 2 + 1, (1 * 4 + 1) * 2
    assert p.attributes[6:10].tolist() == [a_out_img] * 4
    assert p.attributes[11:15].tolist() == [a_in_img] * 4
    plain = packer.pack(Episode("segmentation", "star", pairs))
    batch = collate([p, p])
    assert torch.equal(batch.targets[0], p.next_tokens)
    assert collate([plain]).targets is None


def test_first_answer_weight_scales_only_an_unprompted_first_pair(gpt2):
    vocab = make_vocab(gpt2, grid=2)
    pairs = [seg_pair(40), seg_pair(120), seg_pair(200)]
    episode = Episode("segmentation", "star", pairs, parallel=True, aligned_positions=True)
    plain = Packer(vocab, TASKS).pack(episode)
    packer = Packer(vocab, TASKS, first_answer_weight={"segmentation": 0.25})
    scaled = packer.pack(episode)
    first, second = plain.pair_starts[1], plain.pair_starts[2]
    assert plain.loss_weights[:first].sum() == 6  # [BOI] opening the answer, 4 codes, [EOC]
    assert torch.equal(scaled.loss_weights[:first], 0.25 * plain.loss_weights[:first])
    assert torch.equal(scaled.loss_weights[first:], plain.loss_weights[first:])
    assert torch.equal(scaled.input_ids, plain.input_ids)
    # a first pair behind the category's name follows a prompt: weighted as before
    named = dataclasses.replace(episode, prefix=[Segment("gpt2", "Category:", "input")])
    assert torch.equal(
        packer.pack(named).loss_weights, Packer(vocab, TASKS).pack(named).loss_weights
    )
    # the query alone is never scaled; other tasks keep theirs
    alone = Episode("segmentation", "star", pairs[-1:], parallel=True, aligned_positions=True)
    assert torch.equal(
        packer.pack(alone).loss_weights, Packer(vocab, TASKS).pack(alone).loss_weights
    )
    assert second > first


def test_parallel_answer_needs_a_grid_answer_of_the_image_length(gpt2):
    vocab = make_vocab(gpt2, grid=2)
    ep = Episode("captioning", "star", [cap_pair(40, "a red star")], parallel=True)
    with pytest.raises(ValueError, match="parallel answer needs an output grid segment"):
        Packer(vocab, TASKS).pack(ep)


class GridMaskTokenizer(GridImageTokenizer):
    """A mask tokenizer on its own (coarser) grid: codes_per_image differs from the image's."""

    name: ClassVar[str] = "seqtest_mask"

    @property
    def codes_per_image(self) -> int:
        return self.grid**2


if "seqtest_mask" not in TOKENIZERS:
    TOKENIZERS.register("seqtest_mask")(GridMaskTokenizer)


def test_an_unanswered_query_mask_is_planned_with_the_mask_tokenizers_codes(gpt2):
    vocab = Vocabulary([gpt2, GridImageTokenizer(2), BinsTokenizer(), GridMaskTokenizer(1)])
    packer = Packer(vocab, TASKS)
    image = np.full((8, 8, 3), 90, np.uint8)
    demo = [seg_pair(40)[0], Segment("seqtest_mask", seg_pair(40)[1].payload, "output", "mask")]
    query = [Segment("seqtest_image", image, "input"), Segment("seqtest_mask", None, "output")]
    p = packer.pack(Episode("segmentation", "star", [demo, query]))
    assert len(p) == p.prefix_length  # the prompt only: [BOI] image [BOI]
    assert [s.length for s in p.generation] == [1, 1]  # one mask code, then [EOC]
    with pytest.raises(ValueError, match="only the query's answer may be left to the model"):
        packer.pack(Episode("segmentation", "star", [query, query]))
    blank_image = [Segment("seqtest_image", None, "input"), query[1]]
    with pytest.raises(ValueError, match="segment 0 .* has no payload"):
        packer.pack(Episode("segmentation", "star", [demo, blank_image]))


def test_aligned_autoregressive_masks_are_generated_at_their_images_positions(gpt2):
    vocab = make_vocab(gpt2, grid=2)
    packer = Packer(vocab, TASKS)
    ep = Episode("segmentation", "star", [seg_pair(40), seg_pair(200)], aligned_positions=True)
    p = packer.pack(ep)
    step = p.generation[0]
    assert step.length == 4 and step.rewind > 0
    next_pos = int(p.positions[p.prefix_length - 1]) + 1
    mask = p.positions[p.prefix_length : p.prefix_length + 4].tolist()
    assert mask == [next_pos - step.rewind + j for j in range(4)]  # what training saw
    assert int(p.positions[p.prefix_length + 4]) == next_pos  # [EOC] takes the next position
