"""Fixed evaluation episode files: nesting, determinism, seen/unseen files, loading back."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from unicl.cli import main as cli_main
from unicl.tasks.captioning import CaptioningTask
from unicl.tasks.episodes import (
    build_episode_file,
    load_episodes,
    read_episode_file,
    write_episode_files,
)
from unicl.tasks.segmentation import SegmentationTask
from unicl.tasks.sources import DataConfig, category_split
from unicl.tasks.world import WorldSpec, make_world
from unicl.tokenizers import TOKENIZERS, Tokenizer


class EpisodeCells(Tokenizer):
    """Test image tokenizer: 8 x 8 cells, code = mean grey level // 4."""

    name: ClassVar[str] = "eptest_cells"
    modality: ClassVar[str] = "image"

    @property
    def vocab_size(self) -> int:
        return 64

    @property
    def codes_per_image(self) -> int:
        return 64

    def encode(self, payload: Any) -> torch.Tensor:
        img = np.asarray(payload, dtype=np.float64).mean(axis=2)
        s = img.shape[0] // 8
        cells = img[: 8 * s, : 8 * s].reshape(8, s, 8, s).mean(axis=(1, 3))
        return torch.as_tensor((cells // 4).astype(np.int64).reshape(-1))

    def decode(self, ids: Any) -> np.ndarray:
        return (self.check_ids(ids).numpy().reshape(8, 8) * 4).astype(np.uint8)

    def options(self) -> dict[str, Any]:
        return {}


if "eptest_cells" not in TOKENIZERS:
    TOKENIZERS.register("eptest_cells")(EpisodeCells)


@pytest.fixture(scope="module")
def data_cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("ep_world") / "world"
    make_world(
        root, WorldSpec(seed=7, images=30, val_images=60, size=64), workers=1, progress=False
    )
    return DataConfig(root=str(root), images=30, val_images=60, size=64, seed=7, min_descriptions=0)


def test_files_are_nested_deterministic_and_split_by_group(data_cfg, tmp_path):
    task = SegmentationTask(image_size=64)
    paths = write_episode_files({"segmentation": task}, data_cfg, tmp_path / "a", seed=1)
    names = sorted(p.name for p in paths)
    assert names == ["segmentation_val_seen_seed1.json", "segmentation_val_unseen_seed1.json"]
    groups = category_split(data_cfg)
    for path in paths:
        data = read_episode_file(path)
        assert data["task"] == "segmentation" and data["max_shots"] == 3
        group = set(groups[data["group"]])
        assert data["episodes"]
        for ep in data["episodes"]:
            assert ep["category"] in group
            three = ep["shots"]["3"]
            assert ep["shots"]["1"] == three[:1] and ep["shots"]["2"] == three[:2]
            image = lambda rid: rid.split(":")[0]  # record id = "image_id:category_id"
            assert image(ep["query"]) not in {image(r) for r in three}
            assert len({image(r) for r in three}) == 3
            assert all(data["records"][r]["category"] == ep["category"] for r in three)
    # same seed -> identical bytes; another seed -> other demonstrations
    again = write_episode_files({"segmentation": task}, data_cfg, tmp_path / "b", seed=1)
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]
    other = write_episode_files({"segmentation": task}, data_cfg, tmp_path / "c", seed=2)
    assert [p.read_bytes() for p in paths] != [p.read_bytes() for p in other]


def test_load_episodes_uses_stored_views(data_cfg, tmp_path):
    task = CaptioningTask(image_size=64)
    pools = task.pools(data_cfg, "val")
    data = build_episode_file(task, pools, list(pools), split="val", group="seen", seed=0)
    path = tmp_path / "cap.json"
    path.write_text(json.dumps(data))
    # change a stored crop: loading must use the file's view, not recompute it
    first = data["episodes"][0]
    view = data["records"][first["shots"]["1"][0]]["view"]
    view["crop"] = [view["crop"][0] + 1, view["crop"][1], view["crop"][2] + 1, view["crop"][3]]
    path.write_text(json.dumps(data))
    for shots in (0, 1, 3):
        episodes = list(load_episodes(path, task, data_cfg, shots))
        assert len(episodes) == len(data["episodes"])
        assert all(e.shots == shots for e in episodes)
        assert episodes[0].meta["query_id"] == first["query"]
        assert episodes[0].meta["demo_ids"] == first["shots"][str(shots)] if shots else True
    assert episodes[0].prefix == []
    assert list(load_episodes(path, task, data_cfg, 0))[0].prefix[0].payload == "Category:"
    loaded = list(load_episodes(path, task, data_cfg, 1))[0]
    assert loaded.pairs[0][0].payload.shape == (64, 64, 3)
    with pytest.raises(ValueError, match="shots must be in"):
        list(load_episodes(path, task, data_cfg, 4))
    with pytest.raises(ValueError, match="image_size 64"):
        list(load_episodes(path, CaptioningTask(image_size=32), data_cfg, 1))
    with pytest.raises(ValueError, match="not segmentation"):
        list(load_episodes(path, SegmentationTask(image_size=64), data_cfg, 1))


def test_bad_files_are_rejected(tmp_path):
    bad = {"format": 1, "task": "segmentation", "max_shots": 2, "records": {"a": {}, "b": {}},
           "episodes": [{"query": "q", "shots": {"1": ["a"], "2": ["b", "a"]}}]}  # fmt: skip
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="not nested"):
        read_episode_file(path)
    bad["episodes"][0]["shots"]["2"] = ["a", "b"]
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="record 'q'"):
        read_episode_file(path)
    with pytest.raises(FileNotFoundError, match="episode file not found"):
        read_episode_file(tmp_path / "missing.json")


def test_make_episodes_command(data_cfg, tmp_path, capsys):
    out = tmp_path / "episodes"
    overrides = [
        f"data.root={data_cfg.root}",
        "data.images=30",
        "data.val_images=60",
        "data.size=64",
        "data.seed=7",
        "data.min_descriptions=0",
        "tokenizers=[{name: gpt2}, {name: eptest_cells}, {name: bins}]",
        "tasks={segmentation: {image_size: 64, image_tokenizer: eptest_cells, mask_tokenizer: '',"
        " mask_decoding: autoregressive, aligned_positions: false},"
        " captioning: {image_size: 64, image_tokenizer: eptest_cells}}",
    ]
    args = ["make-episodes", "--shots", "2", "--queries-per-category", "2", str(out), *overrides]
    assert cli_main(args) == 0
    files = sorted(p.name for p in out.glob("*.json"))
    assert "captioning_val_unseen_seed0.json" in files and len(files) == 4
    data = read_episode_file(out / "segmentation_val_seen_seed0.json")
    assert data["max_shots"] == 2
    counts = {}
    for ep in data["episodes"]:
        counts[ep["category"]] = counts.get(ep["category"], 0) + 1
    assert max(counts.values()) <= 2
    assert "wrote" in capsys.readouterr().out
