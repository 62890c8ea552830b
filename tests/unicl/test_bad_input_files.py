"""Bad input over files, part 1: nothing unicl writes deletes or overwrites what a user made
(unicl/ownership.py). Each case asserts the outcome and that the user's files survive."""

from __future__ import annotations

import pytest

from . import training_toy as toy
from .bad_files import (
    fake_run,
    intact,
    snapshot,
    user_folder,
)


def test_export_into_the_run_itself_is_refused(export_dir, tmp_path):
    from unicl.training.export import export

    run = fake_run(export_dir, tmp_path / "run")
    before = snapshot(run)
    with pytest.raises(ValueError, match="is the run directory"):
        export(run, run)
    assert snapshot(run) == before


def test_export_into_the_runs_parent_is_refused(export_dir, tmp_path):
    from unicl.training.export import export

    run = fake_run(export_dir, tmp_path / "runs" / "a")
    sibling = user_folder(tmp_path / "runs" / "b")
    with pytest.raises(ValueError, match="holds it"):
        export(run, tmp_path / "runs")
    assert intact(sibling) and (run / "checkpoints" / "latest").is_file()


def test_export_over_a_user_folder_is_refused(export_dir, tmp_path):
    from unicl.training.export import export

    run = fake_run(export_dir, tmp_path / "run")
    mine = user_folder(tmp_path / "mine")
    with pytest.raises(ValueError, match="not a unicl export folder"):
        export(run, mine)
    assert intact(mine)


def test_export_over_a_file_is_refused(export_dir, tmp_path):
    from unicl.training.export import export

    run = fake_run(export_dir, tmp_path / "run")
    target = tmp_path / "model.bin"
    target.write_text("keep")
    with pytest.raises(ValueError, match="is a file"):
        export(run, target)
    assert target.read_text() == "keep"


def test_export_replaces_an_earlier_export_and_leaves_no_temporary(export_dir, tmp_path):
    import unicl
    from unicl.training.export import export

    run = fake_run(export_dir, tmp_path / "run")
    out = export(run, tmp_path / "out")
    export(run, out)  # its own earlier export: replaced
    assert unicl.load(out, device="cpu") is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]


def test_interrupted_export_keeps_the_previous_export_loadable(export_dir, tmp_path, monkeypatch):
    import unicl
    from unicl import model_files
    from unicl.training.export import export

    run = fake_run(export_dir, tmp_path / "run")
    out = export(run, tmp_path / "out")
    before = snapshot(out)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(model_files, "save_weights", killed)
    with pytest.raises(KeyboardInterrupt):
        export(run, out)
    assert snapshot(out) == before
    assert unicl.load(out, device="cpu") is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]


def test_save_model_refuses_a_user_folder(export_dir, tmp_path):
    import unicl
    from unicl.model_files import save_model

    predictor = unicl.load(export_dir, device="cpu").predictor
    mine = user_folder(tmp_path / "mine")
    with pytest.raises(ValueError, match="never deletes or overwrites"):
        save_model(predictor.cfg, predictor.model, predictor.vocab, mine)
    assert intact(mine)


def test_training_into_a_user_folder_is_refused_before_any_work(tmp_path):
    from unicl.config import load_config, to_dict
    from unicl.training.run import preflight

    mine = user_folder(tmp_path / "mine")
    (mine / "config.yaml").write_text("my: settings\n")
    cfg = load_config("shapes_tiny", [f"train.run_dir={mine}"])
    with pytest.raises(ValueError, match="train.run_dir"):
        preflight(cfg, to_dict(cfg))
    assert intact(mine) and (mine / "config.yaml").read_text() == "my: settings\n"


def test_trainer_refuses_a_user_folder(tmp_path):
    mine = user_folder(tmp_path / "mine")
    with pytest.raises(ValueError, match="train.run_dir"):
        toy.make_trainer(mine, steps=2).setup()
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]


def test_pruning_keeps_a_users_folders_under_checkpoints(tmp_path):
    toy.make_trainer(tmp_path / "run", steps=2, keep_checkpoints=2).run()
    ckpt = tmp_path / "run" / "checkpoints"
    for name in ("mine", ".tmp-mine", "step1"):
        user_folder(ckpt / name)
        (ckpt / name / "config.yaml").write_text("x: 1\n")
    trainer = toy.make_trainer(tmp_path / "run", steps=6, save_every=1, keep_checkpoints=2)
    trainer.run()
    assert all(intact(ckpt / n) for n in ("mine", ".tmp-mine", "step1"))
    assert trainer.checkpoints.tags() == ["step00000005", "step00000006"]


def test_latest_naming_a_path_outside_checkpoints_is_refused(tmp_path):
    from unicl.training.checkpoint import CheckpointManager

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("../../elsewhere\n")
    with pytest.raises(ValueError, match="not a checkpoint tag"):
        CheckpointManager(tmp_path / "checkpoints").latest()


def test_demo_retrain_refuses_a_folder_that_merely_holds_checkpoints(tmp_path):
    from unicl.demo import _clear_run

    mine = user_folder(tmp_path / "mine")
    (mine / "checkpoints").mkdir()
    with pytest.raises(ValueError, match="--retrain --run"):
        _clear_run(mine)
    assert intact(mine)


def test_demo_retrain_clears_its_own_run(export_dir, tmp_path):
    from unicl.demo import _clear_run

    run = fake_run(export_dir, tmp_path / "run")
    _clear_run(run)
    assert not run.exists()


def test_demo_refuses_a_user_folder_as_results_before_work(tmp_path):
    from unicl.demo import DemoOptions, run_demo

    mine = user_folder(tmp_path / "mine")
    with pytest.raises(ValueError, match="--out"):
        run_demo(DemoOptions(out=str(mine), run=str(tmp_path / "run")))
    assert intact(mine) and not (tmp_path / "run").exists()


def test_make_world_refuses_a_folder_that_is_not_a_world(tmp_path):
    from unicl.tasks.world import WorldSpec, make_world

    mine = user_folder(tmp_path / "coco")
    (mine / "annotations").mkdir()
    (mine / "annotations" / "instances_train2017.json").write_text("{}")
    with pytest.raises(ValueError, match="not a unicl world folder"):
        make_world(mine, WorldSpec(images=4, val_images=2, size=64), workers=1, progress=False)
    assert intact(mine)
    assert (mine / "annotations" / "instances_train2017.json").read_text() == "{}"


def test_make_world_rewrites_its_own_world_even_after_an_interruption(tmp_path):
    from unicl.tasks.world import WorldSpec, make_world

    spec = WorldSpec(images=4, val_images=2, size=64)
    out = make_world(tmp_path / "w", spec, workers=1, progress=False)
    (out / "manifest.json").unlink()  # as an interrupted rewrite leaves it
    make_world(out, spec, workers=1, progress=False)
    assert (out / "manifest.json").is_file()


def test_training_data_root_on_a_user_folder_is_refused(tmp_path):
    from unicl.config import load_config
    from unicl.tasks.sources import ensure_world

    mine = user_folder(tmp_path / "data")
    cfg = load_config("shapes_tiny", [f"data.root={mine}"])
    with pytest.raises(ValueError, match="shapes world folder"):
        ensure_world(cfg.data)
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]


def test_retrain_refuses_a_user_folder_that_holds_a_run_json(tmp_path):
    from unicl.demo import _clear_run

    mine = user_folder(tmp_path / "proj")
    (mine / "run.json").write_text('{"experiment": "mine"}')
    with pytest.raises(ValueError, match="--retrain --run"):
        _clear_run(mine)
    assert intact(mine) and (mine / "run.json").is_file()


def test_retrain_keeps_files_a_user_added_to_a_run(export_dir, tmp_path):
    from unicl.demo import _clear_run
    from unicl.ownership import claim

    run = fake_run(export_dir, tmp_path / "run")
    claim(run, "run", "test")
    (run / "notes.txt").write_text("mine")
    _clear_run(run)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


def test_train_vqgan_refuses_a_user_folder(tmp_path):
    from unicl.tokenizers.vqgan_train import VQGANTrainConfig, train_vqgan

    mine = user_folder(tmp_path / "vq")
    (mine / "train_log.jsonl").write_text("my notes\n")
    with pytest.raises(ValueError, match="out: .* is not a unicl vqgan folder"):
        train_vqgan(VQGANTrainConfig(out=str(mine), steps=1))
    assert intact(mine) and (mine / "train_log.jsonl").read_text() == "my notes\n"


def test_export_onto_a_symlink_is_refused_and_the_link_kept(export_dir, tmp_path):
    from unicl.training.export import export

    run = fake_run(export_dir, tmp_path / "run")
    v1 = export(run, tmp_path / "v1")
    (tmp_path / "current").symlink_to(v1)
    with pytest.raises(ValueError, match="symbolic link"):
        export(run, tmp_path / "current")
    assert (tmp_path / "current").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "run", "v1"]


def test_export_into_the_current_folder_works_and_leaves_no_temporary(
    export_dir, tmp_path, monkeypatch
):
    import unicl
    from unicl.training.export import export

    run = fake_run(export_dir, tmp_path / "run")
    (tmp_path / "e").mkdir()
    monkeypatch.chdir(tmp_path / "e")
    export(run, ".")
    assert unicl.load(tmp_path / "e", device="cpu") is not None
    assert not [p for p in tmp_path.rglob("*.partial")]


def test_segment_never_overwrites_its_input_or_an_existing_file(export_dir, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from unicl import cli

    image = np.zeros((16, 16, 3), np.uint8)
    image[4:12, 4:12] = 200
    Image.fromarray(image).save(tmp_path / "q.png")
    Image.fromarray(((image[..., 0] > 0) * 255).astype(np.uint8)).save(tmp_path / "m.png")
    query_bytes = (tmp_path / "q.png").read_bytes()
    common = ["segment", "--model", str(export_dir), "--device", "cpu"]
    common += ["--demo", str(tmp_path / "q.png"), str(tmp_path / "m.png")]
    assert (
        cli.main([*common, "--query", str(tmp_path / "q.png"), "--out", str(tmp_path / "q.png")])
        == 2
    )
    assert "one of the input images" in capsys.readouterr().err
    assert (tmp_path / "q.png").read_bytes() == query_bytes
    (tmp_path / "old.png").write_bytes(b"keep")
    assert (
        cli.main([*common, "--query", str(tmp_path / "q.png"), "--out", str(tmp_path / "old.png")])
        == 2
    )
    assert (
        "--overwrite" in capsys.readouterr().err and (tmp_path / "old.png").read_bytes() == b"keep"
    )
    args = [*common, "--query", str(tmp_path / "q.png"), "--out", str(tmp_path / "old.png")]
    assert cli.main([*args, "--overwrite"]) == 0
    assert Image.open(tmp_path / "old.png").size == (16, 16)


def test_a_run_dir_below_a_file_is_refused_before_any_work(tmp_path):
    from unicl.config import load_config, to_dict
    from unicl.training.run import preflight

    (tmp_path / "img.png").write_bytes(b"x")
    cfg = load_config("shapes_tiny", [f"train.run_dir={tmp_path / 'img.png' / 'sub'}"])
    with pytest.raises(ValueError, match="lies below .*img.png"):
        preflight(cfg, to_dict(cfg))
