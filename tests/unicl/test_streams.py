"""Training streams and the token cache: determinism, epochs, cache reuse and invalidation."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from unicl.attributes import num_attributes
from unicl.config import UniclConfig
from unicl.streams import build_task_streams, build_tasks, collate
from unicl.tasks.sources import DataConfig
from unicl.tasks.world import WorldSpec, make_world
from unicl.token_cache import TokenCache
from unicl.tokenizers import Tokenizer
from unicl.tokenizers.bins import BinsTokenizer
from unicl.tokenizers.gpt2 import GPT2Tokenizer
from unicl.vocab import Vocabulary


class CountingCells(Tokenizer):
    """Test image tokenizer (8 x 8 cells of grey // 4 + offset) that counts its encodes."""

    name: ClassVar[str] = "vqgan"
    modality: ClassVar[str] = "image"

    def __init__(self, offset: int = 0) -> None:
        self.offset = offset
        self.calls = 0

    @property
    def vocab_size(self) -> int:
        return 128

    @property
    def codes_per_image(self) -> int:
        return 64

    def encode(self, payload: Any) -> torch.Tensor:
        self.calls += 1
        img = np.asarray(payload, dtype=np.float64)
        img = img.mean(axis=2) if img.ndim == 3 else img
        s = img.shape[0] // 8
        cells = img[: 8 * s, : 8 * s].reshape(8, s, 8, s).mean(axis=(1, 3))
        return torch.as_tensor((cells // 4).astype(np.int64).reshape(-1) + self.offset)

    def encode_mask(self, mask: Any) -> torch.Tensor:
        return self.encode(np.asarray(mask, dtype=np.uint8) * 255)

    def decode(self, ids: Any) -> np.ndarray:
        return self.check_ids(ids).numpy().reshape(8, 8).astype(np.uint8)

    def options(self) -> dict[str, Any]:
        return {"offset": self.offset}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("data_world") / "world"
    make_world(root, WorldSpec(seed=2, images=40, val_images=8, size=64), workers=1, progress=False)
    return root


def make_cfg(world, cache_dir, views: int = 2) -> UniclConfig:
    task = {"image_size": 64, "cache_views": views, "cache_dir": str(cache_dir), "shots": 2}
    return UniclConfig(
        seed=4,
        data=DataConfig(
            root=str(world), images=40, val_images=8, size=64, seed=2, min_descriptions=0
        ),
        tasks={"segmentation": dict(task), "captioning": dict(task)},
    )


def make_vocab(offset: int = 0) -> Vocabulary:
    return Vocabulary([GPT2Tokenizer(), CountingCells(offset), BinsTokenizer()])


def test_streams_are_deterministic_and_resumable(world, tmp_path):
    vocab = make_vocab()
    cfg = make_cfg(world, tmp_path, views=0)  # no cache: views drawn per sample
    streams = build_task_streams(cfg, vocab, progress=False)
    assert sorted(streams) == ["captioning", "segmentation"]
    for stream in streams.values():
        first = stream.examples(0, 6)
        resumed = stream.examples(3, 3)
        for a, b in zip(first[3:], resumed):
            assert torch.equal(a.input_ids, b.input_ids)
        again = build_task_streams(cfg, make_vocab(), progress=False)[stream.name].examples(0, 6)
        for a, b in zip(first, again):
            assert (
                torch.equal(a.input_ids, b.input_ids) and a.meta["query_id"] == b.meta["query_id"]
            )
        assert all(len(ex.meta["demo_ids"]) == 2 for ex in first)
        batch = collate(first)
        assert batch.task == stream.name and batch.input_ids.shape[0] == 6
        assert int(batch.attributes.max()) < num_attributes(vocab, ["captioning", "segmentation"])


def test_every_record_is_the_query_once_per_epoch(world, tmp_path):
    stream = build_task_streams(make_cfg(world, tmp_path, views=0), make_vocab(), progress=False)[
        "segmentation"
    ]
    n = stream.size
    epoch0 = [stream.episode(i).meta["query_id"] for i in range(n)]
    epoch1 = [stream.episode(i).meta["query_id"] for i in range(n, 2 * n)]
    assert sorted(epoch0) == sorted(epoch1) == sorted(rid for _, rid, _ in stream.records)
    assert epoch0 != epoch1  # a new permutation each epoch
    with pytest.raises(ValueError, match="sample index"):
        stream.episode(-1)


def test_cache_is_reused_and_matches_tokenizing_from_scratch(world, tmp_path):
    vocab = make_vocab()
    cfg = make_cfg(world, tmp_path, views=2)
    streams = build_task_streams(cfg, vocab, progress=False)
    tok = vocab.tokenizers["vqgan"]
    built = tok.calls
    assert built > 0
    seg = streams["segmentation"]
    assert isinstance(seg.cache, TokenCache) and seg.cache.views_per_record == 2
    tok.calls = 0
    examples = seg.examples(0, 4)
    assert tok.calls == 0  # episodes come from the cache: the tokenizer never runs
    # the same episode without cached codes (same views) tokenizes to the same sequence
    for i, packed in enumerate(examples):
        episode = seg.episode(i)
        for pair in episode.pairs:
            for segment in pair:
                assert segment.ids is not None
        _, query, demos = seg.draw(i)
        fresh = dataclasses.replace(
            episode,
            pairs=[seg.task.pair(dataclasses.replace(s, codes={})) for s in [*demos, query]],
        )
        assert torch.equal(seg.packer.pack(fresh).input_ids, packed.input_ids)
    # a second build finds the cache; another tokenizer gets its own
    tok.calls = 0
    again = build_task_streams(cfg, vocab, progress=False)
    assert tok.calls == 2  # only the identity probes (one per task)
    assert again["segmentation"].cache.directory == seg.cache.directory
    other = build_task_streams(cfg, make_vocab(offset=1), progress=False)
    assert other["segmentation"].cache.directory != seg.cache.directory
    assert not torch.equal(other["segmentation"].examples(0, 1)[0].input_ids, examples[0].input_ids)


def test_min_shots_draws_each_episodes_number_of_demonstrations(world, tmp_path):
    cfg = make_cfg(world, tmp_path, views=0)
    cfg.tasks["captioning"]["min_shots"] = 0
    stream = build_task_streams(cfg, make_vocab(), progress=False)["captioning"]
    counts = [len(stream.example(i).meta["demo_ids"]) for i in range(40)]
    assert set(counts) == {0, 1, 2}  # from min_shots to shots
    again = build_task_streams(cfg, make_vocab(), progress=False)["captioning"]
    assert [len(again.example(i).meta["demo_ids"]) for i in range(40)] == counts
    cfg.tasks["captioning"]["min_shots"] = 3  # more than shots
    with pytest.raises(ValueError, match="min_shots must lie in"):
        build_tasks(cfg)


def test_build_tasks_reports_bad_options(world, tmp_path):
    cfg = make_cfg(world, tmp_path)
    cfg.tasks["segmentation"]["shot"] = 3
    with pytest.raises(TypeError, match="unknown option"):
        build_tasks(cfg)


def test_cache_workers_write_the_same_bytes_as_one_process(world, tmp_path, monkeypatch):
    import hashlib

    import unicl.token_cache

    # worker processes even for 40 images
    monkeypatch.setattr(unicl.token_cache, "_MIN_PARALLEL_CHUNKS", 2)
    # the workers unpickle this module's test tokenizer: make it importable there
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    vocab = make_vocab()
    task = build_tasks(make_cfg(world, tmp_path), vocab)["segmentation"]
    pools = task.pools(make_cfg(world, tmp_path).data, "train")
    records = [(task.record_id(r), r) for _, pool in sorted(pools.items()) for r in pool]
    digests = []
    for workers in (1, 2):
        cache = TokenCache.build(
            task, vocab, records, "train", 4, tmp_path / f"w{workers}", batch_size=8,
            progress=False, workers=workers,
        )  # fmt: skip
        h = hashlib.sha256()
        for path in sorted(cache.directory.iterdir()):
            h.update(path.name.encode() + path.read_bytes())
        digests.append(h.hexdigest())
    assert len(records) > 16 and digests[0] == digests[1]


def test_cache_stores_the_demonstrations_object_codes(world, tmp_path):
    """demo_image: object caches a third array per view, and cached episodes equal fresh ones."""
    vocab = make_vocab()
    cfg = make_cfg(world, tmp_path, views=2)
    cfg.tasks["segmentation"]["demo_image"] = "object"
    seg = build_task_streams(cfg, vocab, progress=False)["segmentation"]
    plain = build_task_streams(make_cfg(world, tmp_path, views=2), vocab, progress=False)
    assert seg.cache.directory != plain["segmentation"].cache.directory
    assert set(seg.cache.codes) == {"image", "mask", "object"}
    for i, packed in enumerate(seg.examples(0, 3)):
        _, query, demos = seg.draw(i)
        assert demos and not np.array_equal(demos[0].codes["object"], demos[0].codes["image"])
        fresh = dataclasses.replace(
            seg.episode(i),
            pairs=[seg.task.pair(dataclasses.replace(s, codes={})) for s in demos]
            + [seg.task.pair(dataclasses.replace(query, codes={}), query=True)],
        )
        assert torch.equal(seg.packer.pack(fresh).input_ids, packed.input_ids)
