"""The segmentation task on a small shapes world: pools, views, episodes, post-processing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from unicl.packer import Packer
from unicl.tasks import TASKS, Shot
from unicl.tasks.segmentation import SegmentationTask
from unicl.tasks.sources import DataConfig
from unicl.tasks.world import WorldSpec, make_world
from unicl.tokenizers.bins import BinsTokenizer
from unicl.tokenizers.gpt2 import GPT2Tokenizer
from unicl.vocab import Vocabulary

from .episode_oracle import plain_episodes


@pytest.fixture(scope="module")
def data_cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg_world") / "world"
    make_world(
        root, WorldSpec(seed=3, images=60, val_images=30, size=64), workers=1, progress=False
    )
    return DataConfig(root=str(root), images=60, val_images=30, size=64, seed=3)


@pytest.fixture(scope="module")
def vocab(cell_tokenizer):
    return Vocabulary([GPT2Tokenizer(), cell_tokenizer(grid=16), BinsTokenizer()])


def largest(pools: dict) -> str:
    """The category with the most records (the world's content may change)."""
    return max(sorted(pools), key=lambda c: len(pools[c]))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_pools_drop_small_categories_with_counts(data_cfg):
    task = SegmentationTask(shots=3, image_size=64)
    raw = task.load_pools(data_cfg, "train")
    pools = task.pools(data_cfg, "train")
    dropped = sorted(set(raw) - set(pools))
    for category, records in pools.items():
        assert len({r.image_id for r in records}) >= 4, category
    stats = task.last_pool_stats
    assert stats.get("categories with too few images", 0) == len(dropped)
    assert stats.get("records of categories with < 4 images", 0) == sum(
        len(raw[c]) for c in dropped
    )
    with pytest.raises(ValueError, match="no category has records from 1000 distinct images"):
        task.pools(data_cfg, "train", min_shots=999)


def test_bad_records_are_skipped_and_counted(data_cfg):
    task = SegmentationTask(shots=1, image_size=64)
    raw = task.load_pools(data_cfg, "train")
    category = max(raw, key=lambda c: len(raw[c]))
    records = list(raw[category])
    x0, y0, _, _ = records[0].box
    records[0] = dataclasses.replace(records[0], area=0.0)
    records[1] = dataclasses.replace(records[1], box=(x0, y0, x0, y0 + 5))

    class Patched(SegmentationTask):
        def load_pools(self, cfg, split):
            return {category: records}

    patched = Patched(shots=1, image_size=64)
    pools = patched.pools(data_cfg, "train")
    assert len(pools[category]) == len(records) - 2
    assert patched.last_pool_stats["empty mask"] == 1
    assert patched.last_pool_stats["degenerate box"] == 1


def test_views_keep_image_and_mask_aligned(data_cfg):
    task = SegmentationTask(image_size=64, flip_prob=1.0)
    pools = task.pools(data_cfg, "train")
    record = max(pools[largest(pools)], key=lambda r: r.area)
    rng = np.random.default_rng(0)
    view = task.train_view(record, rng)
    assert view.flip and view.size == 64
    x0, y0, x1, y1 = view.crop
    assert x1 - x0 == y1 - y0
    image, mask = task.view_arrays(Shot(record, view))
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert mask.shape == (64, 64) and mask.dtype == bool and mask.any()
    unflipped = dataclasses.replace(view, flip=False)
    image0, mask0 = task.view_arrays(Shot(record, unflipped))
    assert np.array_equal(image, image0[:, ::-1]) and np.array_equal(mask, mask0[:, ::-1])
    # undoing the view puts the mask back where it was in the original image
    back = view.unapply_mask(mask, record.height, record.width)
    assert back.shape == (record.height, record.width)
    assert iou(back, record.load_mask()) > 0.8
    # the object-centred crop contains the object box
    bx0, by0, bx1, by1 = record.box
    assert x0 <= bx0 + 1 and y0 <= by0 + 1 and x1 >= bx1 - 1 and y1 >= by1 - 1


def test_eval_views_are_deterministic_and_query_crop_full(data_cfg):
    task = SegmentationTask(image_size=64)
    pools = task.pools(data_cfg, "train")
    record = pools[largest(pools)][0]
    assert task.eval_view(record) == task.eval_view(record)
    assert not task.eval_view(record).flip
    full = SegmentationTask(image_size=64, query_crop="full").eval_view(record, query=True)
    assert full.crop == (0, 0, record.width, record.height)
    with pytest.raises(ValueError, match="query_crop"):
        SegmentationTask(query_crop="box")


def test_full_views_show_the_whole_image_in_their_share_of_training_views(data_cfg):
    pools = SegmentationTask(image_size=64).pools(data_cfg, "train")
    record = min(pools[largest(pools)], key=lambda r: r.area)  # its crop is not the image
    whole = (0, 0, record.width, record.height)
    rng = np.random.default_rng(0)
    half = SegmentationTask(image_size=64, full_view_prob=0.5)
    views = [half.train_view(record, rng) for _ in range(400)]
    share = np.mean([v.crop == whole for v in views])
    assert 0.4 < share < 0.6
    assert 0.35 < np.mean([v.flip for v in views if v.crop == whole]) < 0.65  # flips too
    plain = SegmentationTask(image_size=64)
    assert not any(plain.train_view(record, rng).crop == whole for _ in range(50))
    # the share changes the cached views, so it is part of the cache key (and only when set)
    assert half.options()["full_view_prob"] == 0.5 and "full_view_prob" not in plain.options()
    for bad in (1.5, -0.1, "half"):
        with pytest.raises(ValueError, match="full_view_prob must be a probability"):
            SegmentationTask(full_view_prob=bad)


def test_other_object_views_centre_another_category_and_keep_the_mask(data_cfg):
    task = SegmentationTask(image_size=64, other_object_prob=1.0, other_object_min_visible=0.5)
    pools = task.pools(data_cfg, "train")
    by_image = {}
    for records in pools.values():
        for r in records:
            by_image.setdefault(r.image_path, []).append(r)
    rng = np.random.default_rng(0)
    moved = 0
    for records in by_image.values():
        if len(records) < 2:
            continue
        record = records[0]
        view = task.other_object_view(record, rng)
        if view is None:
            continue
        moved += 1
        x0, y0, x1, y1 = view.crop
        centre = ((x0 + x1) / 2, (y0 + y1) / 2)
        # the crop is centred (up to jitter and the image's edge) on another category's box
        side = x1 - x0
        assert any(
            abs((b[0] + b[2]) / 2 - centre[0]) <= 0.6 * side
            and abs((b[1] + b[3]) / 2 - centre[1]) <= 0.6 * side
            for b in (o.box for o in records[1:])
        )
        mask = record.load_mask()
        inside = mask[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)].sum()
        assert inside >= 0.5 * mask.sum()
        assert view.apply(mask).shape == (64, 64)
    assert moved >= 5
    # off by default, and part of the cache key when on
    assert "other_object_prob" not in SegmentationTask(image_size=64).options()
    assert task.options()["other_object_prob"] == 1.0
    # an image without another category's object leaves the ordinary object-centred view
    lonely = SegmentationTask(image_size=64, other_object_prob=1.0)
    record = next(iter(pools.values()))[0]
    assert lonely.other_object_view(record, rng) is None  # its pools were never loaded
    assert (
        lonely.train_view(record, np.random.default_rng(1)).crop
        == task.train_view(
            dataclasses.replace(record, image_path=record.image_path.with_name("none.png")),
            np.random.default_rng(1),
        ).crop
    )
    for option in ("other_object_prob", "other_object_min_visible"):
        with pytest.raises(ValueError, match=f"{option} must be a probability"):
            SegmentationTask(**{option: 2.0})


def test_episode_demos_from_other_images(data_cfg):
    task = SegmentationTask(shots=3, image_size=64)
    pools = task.pools(data_cfg, "train")
    rng = np.random.default_rng(1)
    for category, pool in pools.items():
        query = pool[0]
        demos = task.sample_demos(pool, query, 3, rng)
        assert len({d.image_id for d in demos}) == 3
        assert query.image_id not in {d.image_id for d in demos}
        assert all(d.category == category for d in demos)
    with pytest.raises(ValueError, match="demonstrations needed"):
        task.sample_demos(pool, query, len(pool) + 1, rng)
    shot = Shot(query, task.eval_view(query))
    with pytest.raises(ValueError, match="comes from the query's image"):
        task.episode(shot, [shot], category)


def test_category_text_and_zero_shot_prefix(data_cfg, vocab):
    task = SegmentationTask(shots=1, image_size=64)
    pools = task.pools(data_cfg, "train")
    pool = pools[largest(pools)]
    name = pool[0].category
    other = next(r for r in pool if r.image_id != pool[0].image_id)
    q, d = Shot(pool[0], task.eval_view(pool[0])), Shot(other, task.eval_view(other))
    assert task.episode(q, [d], name).prefix == []
    zero = task.episode(q, [], name)
    assert [s.payload for s in zero.prefix] == ["Category:", "<c_st>", f" {name}", "<c_ed>"]
    with_text = SegmentationTask(shots=1, image_size=64, category_text=True).episode(q, [d], name)
    packed = Packer(vocab, ["segmentation"]).pack(with_text)
    prefix = vocab.decode(
        "gpt2", [i for i in packed.input_ids[: packed.pair_starts[0]] if i < 50257]
    )
    assert prefix == f"Category: {name}"
    # [BOT] "Category" ":" <c_st> " name" <c_ed>
    n = 5 + len(vocab.tokenizers["gpt2"].encode(f" {name}"))
    assert packed.pair_starts[0] == n and packed.loss_weights[:n].sum() == 0


def test_paper_length_with_256_codes(data_cfg, cell_tokenizer):
    """3 demos + query at 256 px with a 256-code tokenizer: exactly 2060 tokens."""
    vocab = Vocabulary([cell_tokenizer(grid=16), BinsTokenizer()])
    task = SegmentationTask(shots=3, image_size=256)
    pools = task.pools(data_cfg, "train")
    category = sorted(pools)[0]
    rng = np.random.default_rng(0)
    query = pools[category][0]
    demos = [
        Shot(r, task.train_view(r, rng)) for r in task.sample_demos(pools[category], query, 3, rng)
    ]
    episode = task.episode(Shot(query, task.train_view(query, rng)), demos, category)
    packed = Packer(vocab, ["segmentation"], max_positions=2060).pack(episode)
    assert len(packed) == 2060 and packed.pair_starts == [0, 515, 1030, 1545]
    assert float(packed.loss_weights.sum()) == 4 * 258  # 256 codes + [BOI] + [EOC] per pair


def test_postprocess_maps_mask_to_original_resolution(data_cfg, vocab):
    task = SegmentationTask(shots=1, image_size=64)
    pools = task.pools(data_cfg, "train")
    pool = pools[largest(pools)]
    query = max(pool, key=lambda r: r.area)
    demo = next(r for r in pool if r.image_id != query.image_id)
    for view in (task.eval_view(query), dataclasses.replace(task.eval_view(query), flip=True)):
        ep = task.episode(Shot(query, view), [Shot(demo, task.eval_view(demo))], query.category)
        packed = Packer(vocab, ["segmentation"]).pack(ep)
        assert packed.target_ids[-1] == vocab["[EOC]"]
        mask = task.postprocess(ep, packed.target_ids.tolist(), vocab).mask
        assert mask.shape == (query.height, query.width) and mask.dtype == bool
        assert iou(mask, query.load_mask()) > 0.6  # 16 x 16 cells of a 64 px crop
    with pytest.raises(ValueError, match="expected 256 mask codes"):
        task.postprocess(ep, packed.target_ids[:10].tolist(), vocab)


def test_registry_builds_with_options_and_rejects_unknown():
    task = TASKS.build("segmentation", shots=0, image_size=32, input_image_weight=0.5)
    assert task.shots == 0 and task.image_size == 32 and task.input_image_weight == 0.5
    with pytest.raises(TypeError, match="unknown option"):
        TASKS.build("segmentation", shot=3)
    with pytest.raises(ValueError, match="shots must be >= 0"):
        SegmentationTask(shots=-1)


def test_episodes_cover_every_record_once(data_cfg):
    task = SegmentationTask(shots=2, image_size=64)
    pools = task.pools(data_cfg, "train")
    for train in (True, False):
        episodes = list(plain_episodes(task, pools, np.random.default_rng(0), train=train))
        assert sorted(e.meta["query_id"] for e in episodes) == sorted(
            task.record_id(r) for pool in pools.values() for r in pool
        )
        assert all(e.shots == 2 for e in episodes)
        assert all(not e.meta["query_view"].flip for e in episodes) or train
    again = list(plain_episodes(task, pools, np.random.default_rng(0), train=False))
    assert [e.meta["demo_ids"] for e in again] == [e.meta["demo_ids"] for e in episodes]


def test_demo_image_object_shows_the_demonstrations_object_alone(data_cfg, vocab):
    from unicl.tasks.segmentation import OBJECT_BACKGROUND, object_image

    task = SegmentationTask(shots=1, image_size=64, demo_image="object")
    plain = SegmentationTask(shots=1, image_size=64)
    assert task.options()["demo_image"] == "object" and "demo_image" not in plain.options()
    pools = task.pools(data_cfg, "train")
    pool = pools[largest(pools)]
    query = pool[0]
    demo = next(r for r in pool if r.image_id != query.image_id)
    q, d = Shot(query, task.eval_view(query)), Shot(demo, task.eval_view(demo))
    image, mask = task.view_arrays(d)
    alone = object_image(image, mask)
    assert mask.any() and (~mask).any()
    assert np.array_equal(alone[mask], image[mask])
    assert (alone[~mask] == OBJECT_BACKGROUND).all()
    assert set(task.cache_arrays(d)) == set(task.cache_names()) == {"image", "mask", "object"}
    assert np.array_equal(task.cache_arrays(d)["object"][1], alone)
    # the demonstration's image segment is its object alone; the query's is its whole view
    episode, reference = task.episode(q, [d], query.category), plain.episode(q, [d], query.category)
    assert np.array_equal(episode.pairs[0][0].payload, alone)
    assert np.array_equal(episode.pairs[1][0].payload, reference.pairs[1][0].payload)
    assert np.array_equal(episode.pairs[0][1].payload, reference.pairs[0][1].payload)  # the mask
    # cached codes: the demonstration takes the object's, the query its image's
    codes = {"image": np.arange(64), "mask": np.arange(64) + 1, "object": np.arange(64) + 2}
    cached = task.episode(
        dataclasses.replace(q, codes=codes), [dataclasses.replace(d, codes=codes)], query.category
    )
    assert np.array_equal(cached.pairs[0][0].ids, codes["object"])
    assert np.array_equal(cached.pairs[1][0].ids, codes["image"])
    with pytest.raises(ValueError, match="demo_image must be one of"):
        SegmentationTask(demo_image="masked")
