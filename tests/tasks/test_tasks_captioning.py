"""The captioning task on a small shapes world: template, box, flips, generation, answers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from unicl.packer import Packer
from unicl.tasks import Shot
from unicl.tasks.captioning import CaptioningTask, swap_left_right
from unicl.tasks.sources import DataConfig
from unicl.tasks.world import WorldSpec, make_world
from unicl.tokenizers.bins import BinsTokenizer
from unicl.tokenizers.gpt2 import GPT2Tokenizer
from unicl.vocab import Vocabulary


@pytest.fixture(scope="module")
def data_cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("cap_world") / "world"
    make_world(
        root, WorldSpec(seed=5, images=40, val_images=20, size=64), workers=1, progress=False
    )
    return DataConfig(root=str(root), images=40, val_images=20, size=64, seed=5, min_descriptions=0)


@pytest.fixture(scope="module")
def vocab(cell_tokenizer):
    return Vocabulary([GPT2Tokenizer(), cell_tokenizer(grid=8), BinsTokenizer()])


@pytest.fixture(scope="module")
def pools(data_cfg, vocab):
    task = CaptioningTask(shots=1, image_size=64)
    task.bind(vocab)
    return task.pools(data_cfg, "train")


def test_swap_left_right_words():
    assert swap_left_right("the cat to the left of a Right box") == (
        "the cat to the right of a Left box"
    )
    assert (
        swap_left_right("leftmost star, bright light, LEFT")
        == "rightmost star, bright light, RIGHT"
    )


def test_pair_template_and_box(pools, vocab):
    task = CaptioningTask(image_size=64)
    task.bind(vocab)
    record = pools[sorted(pools)[0]][0]
    view = task.eval_view(record)
    segments = task.pair(Shot(record, view))
    assert [s.modality for s in segments] == [
        "vqgan", "gpt2", "special", "gpt2", "special", "gpt2", "special", "bins", "special",
        "gpt2", "gpt2",
    ]  # fmt: skip
    assert segments[0].role == "input" and all(s.role == "output" for s in segments[1:])
    assert segments[3].payload == f" {record.category}"
    assert segments[10].payload == f" {record.phrase.strip()}"
    box = segments[7].payload
    assert all(0.0 <= v <= 1.0 for v in box) and box == [round(v, 3) for v in box]
    # the box mapped back through the view lands on the record's box (to a pixel)
    back = view.box_from_view(box)
    assert np.allclose(back, record.box, atol=view.crop[2] - view.crop[0] / 500 + 1)


def test_flipped_view_mirrors_box_and_swaps_words(pools):
    task = CaptioningTask(image_size=64)
    record = dataclasses.replace(pools[sorted(pools)[0]][0], phrase="a star left of the ring")
    view = task.eval_view(record)
    flipped = dataclasses.replace(view, flip=True)
    plain, mirrored = task.pair(Shot(record, view)), task.pair(Shot(record, flipped))
    assert mirrored[10].payload == " a star right of the ring"
    x0, y0, x1, y1 = plain[7].payload
    assert np.allclose(mirrored[7].payload, [1 - x1, y0, 1 - x0, y1], atol=1e-3)
    assert np.array_equal(mirrored[0].payload, plain[0].payload[:, ::-1])
    # without word swapping, captioning never flips
    rng = np.random.default_rng(0)
    no_swap = CaptioningTask(image_size=64, swap_left_right=False, flip_prob=1.0)
    assert not any(no_swap.train_view(record, rng).flip for _ in range(10))
    assert all(
        CaptioningTask(image_size=64, flip_prob=1.0).train_view(record, rng).flip for _ in range(3)
    )


def test_long_captions_are_skipped_with_a_count(pools, vocab, data_cfg):
    task = CaptioningTask(shots=1, image_size=64)
    task.bind(vocab)
    category = max(pools, key=lambda c: len(pools[c]))
    records = list(pools[category])
    records[0] = dataclasses.replace(records[0], phrase="word " * 80)
    records[1] = dataclasses.replace(records[1], phrase="   ")

    class Patched(CaptioningTask):
        def load_pools(self, cfg, split):
            return {category: records}

    patched = Patched(shots=1, image_size=64)
    patched.bind(vocab)
    kept = patched.pools(data_cfg, "train")[category]
    assert len(kept) == len(records) - 2
    assert patched.last_pool_stats == {"caption longer than the image pair": 1, "empty caption": 1}
    assert patched.text_budget() == 64 + 2


def test_packed_caption_episode_and_answer(pools, vocab):
    task = CaptioningTask(shots=2, image_size=64)
    task.bind(vocab)
    category = max(pools, key=lambda c: len(pools[c]))
    rng = np.random.default_rng(0)
    query = pools[category][0]
    demos = task.sample_demos(pools[category], query, 2, rng)
    ep = task.episode(
        Shot(query, task.eval_view(query)), [Shot(d, task.eval_view(d)) for d in demos], category
    )
    packed = Packer(vocab, ["captioning", "segmentation"]).pack(ep)
    assert len(packed) == 3 * (2 * 65 + 1) and packed.pair_starts == [0, 131, 262]
    prompt_tail = vocab.decode("gpt2", packed.prompt_ids[-3:].tolist())
    assert prompt_tail.endswith("Caption:")
    answer = task.postprocess(ep, packed.target_ids.tolist(), vocab)
    assert answer.text == query.phrase.strip() and answer.box is None
    # padding after [EOC] carries no loss
    pads = packed.input_ids == vocab.pad_id
    assert pads.any() and packed.loss_weights[pads].sum() == 0


def test_dense_captioning_generates_box_and_caption(pools, vocab):
    task = CaptioningTask(shots=1, image_size=64, generate="box")
    task.bind(vocab)
    category = max(pools, key=lambda c: len(pools[c]))
    query, demo = pools[category][0], pools[category][1]
    if demo.image_id == query.image_id:
        demo = next(r for r in pools[category] if r.image_id != query.image_id)
    ep = task.episode(
        Shot(query, task.eval_view(query)), [Shot(demo, task.eval_view(demo))], category
    )
    packed = Packer(vocab, ["captioning"]).pack(ep)
    assert vocab.decode("gpt2", packed.prompt_ids[-4:].tolist()).endswith("Bboxes:")
    (step,) = packed.generation
    assert set(step.spans) == {"bins", "gpt2"} and "<b_st>" in step.tokens
    answer = task.postprocess(ep, packed.target_ids.tolist(), vocab)
    assert answer.text == query.phrase.strip()
    side = ep.meta["query_view"].crop[2] - ep.meta["query_view"].crop[0]
    assert np.allclose(answer.box, query.box, atol=side / 1000 + 1e-6)
    category_task = CaptioningTask(shots=1, image_size=64, generate="category")
    ep = category_task.episode(
        Shot(query, task.eval_view(query)), [Shot(demo, task.eval_view(demo))], category
    )
    packed = Packer(vocab, ["captioning"]).pack(ep)
    answer = category_task.postprocess(ep, packed.target_ids.tolist(), vocab)
    assert answer.category == category and answer.text == query.phrase.strip()
    with pytest.raises(ValueError, match="generate must be one of"):
        CaptioningTask(generate="all")


def test_rename_augmentation_replaces_the_category_in_every_pair(pools, vocab):
    from unicl.tasks.vg import PhraseMatcher, builtin_synonyms

    task = CaptioningTask(image_size=64, rename_prob=1.0)
    task.bind(vocab)
    category = next(c for c in sorted(pools) if len(pools[c]) >= 2)
    query, demo = pools[category][0], pools[category][1]
    shots = [Shot(r, task.eval_view(r)) for r in (query, demo)]
    episode = task.episode(shots[0], shots[1:], category)
    renamed = task.augment(episode, np.random.default_rng(0))
    word = renamed.category
    assert word != category and word.isalpha()
    matcher = PhraseMatcher(builtin_synonyms([category]))
    for before, after in zip(episode.pairs, renamed.pairs):
        assert after[3].payload == f" {word}"  # the category field
        caption = after[10].payload
        assert matcher.match(caption) is None and word in caption
        assert before[10].payload != caption
    # evaluation and rename_prob=0 leave episodes alone
    plain = CaptioningTask(image_size=64)
    assert plain.augment(episode, np.random.default_rng(0)) is episode
    with pytest.raises(ValueError, match="rename_prob must lie in"):
        CaptioningTask(rename_prob=1.5)


@pytest.mark.parametrize(
    ("option", "pattern"),
    [
        ({"num_beams": 0}, "num_beams must be an integer >= 1"),
        ({"num_beams": 2.0}, "num_beams must be an integer >= 1"),
        ({"length_penalty": float("inf")}, r"length_penalty must be a number in \[-10, 10\]"),
        ({"length_penalty": -11}, r"length_penalty must be a number in \[-10, 10\]"),
        ({"length_penalty": "0"}, "length_penalty must be a number in"),
    ],
)
def test_decoding_options_are_checked(option, pattern):
    with pytest.raises(ValueError, match=f"^captioning: {pattern}"):
        CaptioningTask(**option)
    task = CaptioningTask(num_beams=3, length_penalty=0)
    assert (task.num_beams, task.length_penalty) == (3, 0.0)


def test_rename_to_another_category_picks_a_name_the_episode_does_not_use(pools, vocab):
    from unicl.tasks.vg import PhraseMatcher, builtin_synonyms

    task = CaptioningTask(image_size=64, rename_prob=1.0, rename_words="categories")
    task.bind(vocab)
    categories = sorted(pools)
    seen = set()
    for category in categories:
        pool = pools[category]
        others = [r for r in pool[1:] if task.image_key(r) != task.image_key(pool[0])]
        if not others:
            continue
        query, demo = pool[0], others[0]
        shots = [Shot(r, task.eval_view(r)) for r in (query, demo)]
        episode = task.episode(shots[0], shots[1:], category)
        texts = [s.payload for pair in episode.pairs for s in pair if s.modality == "gpt2"]
        for seed in range(5):
            renamed = task.augment(episode, np.random.default_rng(seed), categories=categories)
            word = renamed.category
            seen.add(word)
            assert word in categories and word != category
            # the new name was nowhere in the episode, and the old one is gone everywhere
            assert PhraseMatcher(builtin_synonyms([word])).match(" ".join(texts)) is None
            for pair in renamed.pairs:
                assert pair[3].payload == f" {word}"
                assert PhraseMatcher(builtin_synonyms([category])).match(pair[10].payload) is None
        # without training categories to draw from, the name is made up
        alone = task.augment(episode, np.random.default_rng(0))
        assert alone.category not in categories and alone.category.isalpha()
    assert len(seen) > 2
    both = CaptioningTask(image_size=64, rename_prob=1.0, rename_words="both")
    both.bind(vocab)
    words = {
        both.augment(episode, np.random.default_rng(s), categories=categories).category
        for s in range(40)
    }
    assert words & set(categories) and words - set(categories)
    with pytest.raises(ValueError, match="rename_words must be one of"):
        CaptioningTask(rename_words="real")


def test_region_codes_are_a_lattice_of_the_cells_under_the_box():
    from unicl.tasks.captioning import region_codes

    codes = np.arange(64)  # an 8 x 8 grid whose code is its cell index
    # cell centres at (i + 0.5) / 8: columns and rows 2-5 lie in [0.3, 0.7]
    assert region_codes(codes, (0.3, 0.3, 0.7, 0.7), 16).tolist() == [
        r * 8 + c for r in range(2, 6) for c in range(2, 6)
    ]
    # a whole-image box keeps 4 evenly spaced rows and columns, corners included
    whole = region_codes(codes, (0.0, 0.0, 1.0, 1.0), 16).reshape(4, 4)
    assert whole[0, 0] == 0 and whole[-1, -1] == 63 and len(set(whole[:, 0] % 8)) == 1
    # a wide box is thinned along its longer side first
    assert region_codes(codes, (0.1, 0.3, 0.9, 0.5), 12).tolist() == [
        r * 8 + c for r in (2, 3) for c in (1, 2, 3, 4, 5, 6)
    ]
    # a box between cell centres gets the cell under its centre
    assert region_codes(codes, (0.51, 0.51, 0.55, 0.55), 16).tolist() == [4 * 8 + 4]
    with pytest.raises(ValueError, match="square grid"):
        region_codes(np.arange(10), (0, 0, 1, 1), 4)


def test_region_tokens_follow_the_box_in_training_and_user_prompts(pools, vocab):
    from unicl.tasks.captioning import region_codes

    task = CaptioningTask(shots=1, image_size=64, region_tokens=9)
    task.bind(vocab)
    category = max(pools, key=lambda c: len(pools[c]))
    query = pools[category][0]
    demo = next(r for r in pools[category] if r.image_id != query.image_id)
    shots = [Shot(r, task.eval_view(r)) for r in (query, demo)]
    segments = task.pair(shots[0])
    region, caption = segments[9], segments[11]
    assert region.modality == "vqgan" and region.role == "input"
    assert segments[8].payload == "<b_ed>" and segments[10].payload == ". Caption:"
    image = np.asarray(segments[0].ids)
    assert 1 <= len(region.ids) <= 9
    assert region.ids.tolist() == region_codes(image, segments[7].payload, 9).tolist()
    assert caption.payload == f" {query.phrase.strip()}"
    # the same codes whether the image comes encoded (the token cache) or as pixels
    cached = dataclasses.replace(shots[0], codes={"image": image})
    assert np.array_equal(task.pair(cached)[9].ids, region.ids)
    # packed: ... <b_ed> [BOI] region [BOT] . Caption: ...; generation starts after "Caption:"
    episode = task.episode(shots[0], shots[1:], category)
    packer = Packer(vocab, ["captioning"])
    packed = packer.pack(episode)
    assert vocab.decode("gpt2", packed.prompt_ids[-3:].tolist()).endswith("Caption:")
    answer = task.postprocess(episode, packed.target_ids.tolist(), vocab)
    assert answer.text == query.phrase.strip()
    ids = packed.input_ids.tolist()
    b_ed = [i for i, t in enumerate(ids) if t == vocab["<b_ed>"]][-1]
    n = len(region.ids)
    assert ids[b_ed + 1] == vocab["[BOI]"] and ids[b_ed + n + 2] == vocab["[BOT]"]
    assert np.array_equal(
        np.asarray(ids[b_ed + 2 : b_ed + n + 2]) - vocab.ranges["vqgan"].start, region.ids
    )
    # the region is given, not scored; the [BOT] after it opens the scored text
    assert float(packed.loss_weights[b_ed + 1 : b_ed + n + 2].sum()) == 0.0
    # the text budget counts the region's tokens
    plain = CaptioningTask(image_size=64)
    plain.bind(vocab)
    assert task.text_length(query) == plain.text_length(query) + 9 + 2


def test_region_tokens_are_validated():
    with pytest.raises(ValueError, match="region_tokens must be >= 0"):
        CaptioningTask(region_tokens=-1)
    with pytest.raises(ValueError, match="region_tokens must be an integer"):
        CaptioningTask(region_tokens=True)
    with pytest.raises(ValueError, match="region_tokens needs the box in the prompt"):
        CaptioningTask(region_tokens=4, generate="box")
