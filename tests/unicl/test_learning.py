"""The learnability benchmark's variants (unicl/learning.py): every lever is a valid config."""

import numpy as np
import pytest

from unicl.config import load_config
from unicl.evaluate import other_category_demos
from unicl.learning import VARIANTS, summary_table, variant_overrides
from unicl.tasks.prompt import Episode, Segment


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_is_a_valid_config(name):
    cfg = load_config("shapes_tiny", variant_overrides(name))
    seg = cfg.tasks["segmentation"]
    if name == "paper":
        assert seg["mask_tokenizer"] == "" and seg["mask_decoding"] == "autoregressive"
        assert not cfg.model.code_features and [t["name"] for t in cfg.tokenizers] == [
            "gpt2", "vqgan", "bins",
        ]  # fmt: skip
    if "maskbits" in name:
        assert seg["mask_tokenizer"] == "maskbits"
        assert "maskbits" in [t["name"] for t in cfg.tokenizers]


def test_levers_start_from_the_paper_choices():
    cfg = load_config("shapes_tiny", variant_overrides("aligned"))
    seg = cfg.tasks["segmentation"]
    assert seg["aligned_positions"] is True and seg["mask_decoding"] == "autoregressive"
    assert cfg.train.lr == 1e-3 and not cfg.model.attribute_embedding


def test_unknown_variant_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown variant 'nope'; valid variants: default, paper"):
        variant_overrides("nope")


def test_summary_table_has_a_row_per_variant_and_the_baselines():
    def rows(method_values):
        return [
            {"method": m, "shots": k, "split": s, "metrics": {"miou": v}}
            for m, v in method_values
            for k in (0, 1, 3)
            for s in ("seen", "unseen")
        ]

    result = {
        "variant": "x",
        "train_minutes": 1.0,
        "segmentation": rows([("model", 40.0), ("copy demo mask", 20.0), ("all background", 0.0)]),
        "whole_image": rows([("model", 30.0), ("copy demo mask", 15.0)]),
        "diagnostics": {"unseen": {"ceiling_iou": 86.0, "free_running_iou": 40.0}},
    }
    table = summary_table([result])
    assert "| x | 1.0 | 40.0 / 40.0 | 40.0 / 40.0 | 40.0 / 40.0 | 30.0 / 30.0 |" in table
    assert "| copy demo mask |" in table and "x 86.0" in table


def test_summary_table_shows_the_other_category_demos_in_brackets():
    rows = [
        {"method": "model", "shots": 1, "split": s, "metrics": {"miou": 30.0}}
        for s in ("seen", "unseen")
    ]
    result = {
        "variant": "x",
        "train_minutes": 1.0,
        "segmentation": rows,
        "whole_image": rows,
        "whole_image_other_demos": {"seen": 12.0, "unseen": 14.5},
        "diagnostics": {"unseen": {"other_demos_iou": 25.0, "shuffled_image_iou": 5.0}},
    }
    table = summary_table([result])
    assert "| 30.0 / 30.0 (12.0 / 14.5) |" in table
    assert " /  / 5.0 / 25.0 |" in table


def _episode(category, demos, image=None, demo_images=()):
    pairs = [[Segment("vqgan", None, "input", ids=np.array([i]))] for i in demos]
    query = [Segment("vqgan", None, "input", ids=np.array([-1]))]
    meta = {"query_image": image, "demo_images": list(demo_images), "demo_ids": list(demos)}
    return Episode(task="segmentation", category=category, pairs=[*pairs, query], meta=meta)


def test_other_category_demos_takes_another_category_half_the_list_away_and_keeps_the_query():
    episodes = [_episode("a", [1]), _episode("a", [2]), _episode("b", [3]), _episode("c", [4])]
    swapped = other_category_demos(episodes)
    demo = lambda e: int(e.pairs[0][0].ids[0])
    assert [demo(e) for e in swapped] == [3, 4, 1, 2]
    assert [e.meta["demo_ids"] for e in swapped] == [[3], [4], [1], [2]]
    assert [e.category for e in swapped] == ["a", "a", "b", "c"]
    assert all(s.pairs[-1] is e.pairs[-1] for s, e in zip(swapped, episodes))
    # the originals are untouched; one category, or no demonstrations: nothing to swap
    assert [demo(e) for e in episodes] == [1, 2, 3, 4]
    assert other_category_demos(episodes[:2]) == []
    # a donor whose demonstrations come from the query's image is passed over
    episodes = [
        _episode("a", [1], image="x", demo_images=["y"]),
        _episode("b", [2], image="z", demo_images=["x"]),
        _episode("c", [3], image="w", demo_images=["v"]),
    ]
    assert [demo(e) for e in other_category_demos(episodes)] == [3, 3, 1]
    assert other_category_demos([_episode("a", []), _episode("b", [])]) == []
