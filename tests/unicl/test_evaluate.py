"""The evaluation table (unicl/evaluate.py): rows, JSON round trip, Markdown layout."""

import json

import numpy as np
import pytest

from unicl.evaluate import (
    BASELINE_BACKGROUND,
    MODEL,
    EvalTable,
    Row,
    check_shots,
    load_table,
)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def _table():
    table = EvalTable(task="segmentation", run="runs/x")
    table.rows += [
        Row(MODEL, 1, "seen", 10, {"miou": 51.234, "mae": 0.1234}),
        Row(MODEL, 1, "unseen", 4, {"miou": 20.5, "mae": 0.2}),
        Row(BASELINE_BACKGROUND, 1, "seen", 10, {"miou": 0.0, "mae": 0.3}),
    ]
    return table


def test_markdown_layout():
    md = _table().to_markdown().splitlines()
    assert md[0] == (
        "| method | shots | seen mIoU | seen MAE | seen n | unseen mIoU | unseen MAE | unseen n |"
    )
    assert md[2] == "| model | 1 | 51.23 | 0.123 | 10 | 20.50 | 0.200 | 4 |"
    # a split without a row shows dashes, not zeros
    assert md[3] == "| all background | 1 | 0.00 | 0.300 | 10 | - | - | - |"


def test_json_round_trip(tmp_path):
    table = _table()
    json_path, md_path = table.save(tmp_path)
    assert json_path.name == "eval_segmentation.json" and md_path.read_text().startswith("# ")
    back = load_table(json_path)
    assert back.to_json() == json.loads(json_path.read_text()) == table.to_json()
    assert back.get(MODEL, 1, "unseen").metrics["miou"] == 20.5
    assert back.get(MODEL, 2, "seen") is None


def test_check_shots():
    assert check_shots([3, 0, 1, 1]) == [0, 1, 3]
    with pytest.raises(ValueError, match="shots"):
        check_shots([4])
    with pytest.raises(ValueError, match="shots"):
        check_shots([])


# ---- a real evaluation on a tiny world with a random tiny model ------------ #


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, make_tiny_export):
    """An exported random tiny model whose data is a small shapes world."""
    import yaml

    root = tmp_path_factory.mktemp("eval")
    world = [f"data.root={root / 'world'}", "data.images=30", "data.val_images=48"]
    out = make_tiny_export(root / "model", overrides=[*world, "data.size=64", "data.workers=1"])
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["val_images"] == 48
    return out


def test_evaluate_segmentation_with_baselines(tiny_run):
    import unicl
    from unicl.evaluate import (
        BASELINE_COPY,
        EvalOptions,
        ensure_episode_files,
        episode_dir,
        evaluate,
    )
    from unicl.tasks.episodes import load_episodes
    from unicl.tasks.scoring import copy_demo_mask

    model = unicl.load(tiny_run, device="cpu")
    opts = EvalOptions(shots=[0, 1], queries_per_category=1, batch_size=4)
    files = ensure_episode_files(model.predictor, episode_dir(tiny_run / "episodes", opts), opts)
    table = evaluate(model, "segmentation", files, opts, run="tiny", progress=False)
    for split in ("seen", "unseen"):
        row = table.get(MODEL, 1, split)
        assert row.episodes > 0 and 0 <= row.metrics["miou"] <= 100
        assert 0 <= row.metrics["mae"] <= 1
        assert table.get(BASELINE_COPY, 0, split) is None  # nothing to copy at 0 shots
    # the all-background baseline: IoU 0, MAE = mean foreground fraction of the queries
    task = model.predictor.tasks["segmentation"]
    path = next(files.glob("segmentation_val_seen_*.json"))
    episodes = list(load_episodes(path, task, model.predictor.cfg.data, 1))
    truths = [e.meta["query_record"].load_mask() for e in episodes]
    background = table.get(BASELINE_BACKGROUND, 1, "seen")
    assert background.metrics["miou"] == 0.0
    assert background.metrics["mae"] == pytest.approx(np.mean([t.mean() for t in truths]))
    # copying demo 1's mask through the views lands it at the query's resolution
    copied = copy_demo_mask(episodes[0])
    assert copied.shape == truths[0].shape and copied.dtype == np.bool_
    assert "| model | 1 |" in table.to_markdown()
    assert table.meta["decoding"] == "parallel"  # masks are read out of one pass
    with pytest.raises(ValueError, match="^num_beams: this model reads its segmentation"):
        evaluate(model, "segmentation", files, EvalOptions(shots=[1], num_beams=3), progress=False)


def test_other_demos_answers_each_query_with_another_categorys_demonstrations(
    tiny_run, monkeypatch
):
    """A stand-in model that answers with its first demonstration's mask: the extra row
    scores exactly another category's demonstration masks, and only at k >= 1."""
    import unicl
    from unicl.evaluate import (
        BASELINE_COPY,
        EvalOptions,
        ensure_episode_files,
        episode_dir,
        evaluate,
        other_category_demos,
    )
    from unicl.predictor import Prediction
    from unicl.tasks.episodes import load_episodes
    from unicl.tasks.metrics import SegmentationMeter
    from unicl.tasks.scoring import MODEL_OTHER_DEMOS, copy_demo_mask
    from unicl.tasks.segmentation import MaskAnswer

    model = unicl.load(tiny_run, device="cpu")

    def copy_first_demo(episodes, options):
        out = []
        for e in episodes:
            mask = copy_demo_mask(e) if e.shots else np.zeros(e.meta["query_size"], bool)
            value = MaskAnswer(mask, 255.0 * mask.astype(np.float32), 127.5)
            out.append(Prediction(value, np.zeros(0), np.zeros(0)))
        return out

    monkeypatch.setattr(model.predictor, "answer", copy_first_demo)
    opts = EvalOptions(shots=[0, 1], queries_per_category=2, batch_size=4, other_demos=True)
    files = ensure_episode_files(model.predictor, episode_dir(tiny_run / "episodes", opts), opts)
    table = evaluate(model, "segmentation", files, opts, progress=False)
    task = model.predictor.tasks["segmentation"]
    path = next(files.glob("segmentation_val_seen_*.json"))
    episodes = list(load_episodes(path, task, model.predictor.cfg.data, 1))
    swapped = other_category_demos(episodes)
    assert all(s.category == e.category for s, e in zip(swapped, episodes))
    assert all(s.pairs[0] is not e.pairs[0] for s, e in zip(swapped, episodes))
    expected = SegmentationMeter()
    for e in swapped:
        expected.update(copy_demo_mask(e), e.meta["query_record"].load_mask(), e.category)
    row = table.get(MODEL_OTHER_DEMOS, 1, "seen")
    assert row.episodes == len(episodes)
    assert row.metrics["miou"] == pytest.approx(100.0 * expected.class_miou)
    # its own demonstrations give the copy baseline; another category's give something else
    assert table.get(MODEL, 1, "seen").metrics == table.get(BASELINE_COPY, 1, "seen").metrics
    assert row.metrics != table.get(MODEL, 1, "seen").metrics
    assert table.get(MODEL_OTHER_DEMOS, 0, "seen") is None  # nothing to swap at 0 shots
    assert table.meta["options"]["other_demos"] is True
    # with an ensemble, the swapped row answers as many demonstration sets as the model's
    answered = []
    monkeypatch.setattr(
        model.predictor,
        "answer",
        lambda episodes, options: answered.extend(episodes) or copy_first_demo(episodes, options),
    )
    ensembled = EvalOptions(shots=[1], queries_per_category=2, ensemble=2, other_demos=True)
    table = evaluate(model, "segmentation", files, ensembled, progress=False)
    queries = sum(table.get(MODEL, 1, group).episodes for group in ("seen", "unseen"))
    assert len(answered) == 2 * 2 * queries
    assert "other_demos" not in evaluate(
        model, "segmentation", files, EvalOptions(shots=[1], queries_per_category=2),
        progress=False,
    ).meta["options"]  # fmt: skip


def test_evaluate_records_the_captions_decoding(tiny_run, monkeypatch):
    import unicl
    from unicl.evaluate import EvalOptions, ensure_episode_files, episode_dir, evaluate

    model = unicl.load(tiny_run, device="cpu")
    monkeypatch.setattr(model.predictor.tasks["captioning"], "num_beams", 2)
    opts = EvalOptions(shots=[1], queries_per_category=1, batch_size=4, max_tokens=4)
    files = ensure_episode_files(model.predictor, episode_dir(tiny_run / "episodes", opts), opts)
    table = evaluate(model, "captioning", files, opts, progress=False)
    assert table.meta["decoding"] == {"num_beams": 2, "length_penalty": 0.0}  # the config's
    assert table.meta["options"]["num_beams"] is None  # nothing asked on the command line
    opts = EvalOptions(**{**opts.__dict__, "num_beams": 1, "length_penalty": 1.0})
    table = evaluate(model, "captioning", files, opts, progress=False)
    assert table.meta["decoding"] == {"num_beams": 1, "length_penalty": 1.0}


def test_evaluate_on_other_data(tiny_run, tmp_path):
    """`EvalOptions.data` (`unicl eval --data root=...`): the same model scored on another
    world, with episode files of that world in a folder of their own."""
    from pathlib import Path

    import unicl
    from unicl.config import with_data
    from unicl.evaluate import EvalOptions, ensure_episode_files, episode_dir, evaluate
    from unicl.tasks.episodes import load_episodes
    from unicl.tasks.world import WorldSpec, make_world

    other = tmp_path / "other"
    make_world(
        other, WorldSpec(seed=5, images=30, val_images=48, size=64), workers=1, progress=False
    )
    model = unicl.load(tiny_run, device="cpu")
    own_root = model.predictor.cfg.data.root
    change = (f"root={other}", "seed=5")
    model.predictor.cfg = with_data(model.predictor.cfg, change)
    assert model.predictor.cfg.data.root == str(other)
    assert model.predictor.cfg.data.val_images == 48  # the rest of the data section stays
    opts = EvalOptions(shots=[1], queries_per_category=1, batch_size=4, data=change)
    plain = EvalOptions(shots=[1], queries_per_category=1, batch_size=4)
    assert episode_dir(tmp_path, opts) != episode_dir(tmp_path, plain)
    files = ensure_episode_files(model.predictor, episode_dir(tmp_path, opts), opts)
    task = model.predictor.tasks["segmentation"]
    path = next(files.glob("segmentation_val_seen_*.json"))
    episodes = list(load_episodes(path, task, model.predictor.cfg.data, 1))
    assert episodes and all(other in e.meta["query_record"].image_path.parents for e in episodes)
    assert not any(Path(own_root) in e.meta["query_record"].image_path.parents for e in episodes)
    table = evaluate(model, "segmentation", files, opts, run="tiny", progress=False)
    assert table.meta["options"]["data"] == list(change)
    assert (
        "data"
        not in evaluate(model, "segmentation", files, plain, run="tiny", progress=False).meta[
            "options"
        ]
    )


def test_a_model_is_known_by_its_weights_and_its_config(tmp_path, make_tiny_export):
    """Evaluation tables are reused only for the same model: an edited read-out option (the
    export's config.yaml) makes it another model."""
    import yaml

    from unicl.model_files import read_model

    out = make_tiny_export(tmp_path / "tiny")
    first = read_model(out).identity
    assert read_model(out).identity == first
    config = yaml.safe_load((out / "config.yaml").read_text())
    config["tasks"]["segmentation"]["mask_threshold"] = 0.3
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    assert read_model(out).identity != first
