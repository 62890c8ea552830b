"""Bad input over files: nothing unicl writes destroys a user's files, loading runs no code
from a file, non-finite values are refused where they enter (unicl/ownership.py,
unicl/model_files.py). Each case asserts the outcome and that the user's files survive."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import yaml

from unicl.model_files import MODEL_STATES, WEIGHTS_FILE

from . import training_toy as toy

# --------------------------------------------------------------------------- #
# fixtures: a tiny export, a run directory made from it, a malicious pickle
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, make_tiny_export):
    return make_tiny_export(tmp_path_factory.mktemp("bad-files") / "export")


def _fake_run(export_dir: Path, run_dir: Path, module: dict | None = None) -> Path:
    """A run directory shaped like `unicl train`'s, holding the export's weights."""
    from safetensors.torch import load_file

    tag_dir = run_dir / "checkpoints" / "step00000002"
    tag_dir.mkdir(parents=True)
    (tag_dir / "config.yaml").write_text((export_dir / "config.yaml").read_text())
    state = module if module is not None else load_file(str(export_dir / WEIGHTS_FILE))
    torch.save({"module": state}, tag_dir / MODEL_STATES)
    (run_dir / "checkpoints" / "latest").write_text("step00000002\n")
    (run_dir / "run.json").write_text(json.dumps({"status": "finished", "step": 2}))
    return run_dir


class _Payload:
    """Unpickling this runs `open(path, "w")`: evidence of code execution."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def _user_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "thesis.tex").write_text("years of work")
    return path


def _intact(path: Path) -> bool:
    return (path / "thesis.tex").read_text() == "years of work"


# --------------------------------------------------------------------------- #
# data loss: export
# --------------------------------------------------------------------------- #


def test_export_into_the_run_itself_is_refused(export_dir, tmp_path):
    from unicl.training.export import export

    run = _fake_run(export_dir, tmp_path / "run")
    before = _snapshot(run)
    with pytest.raises(ValueError, match="is the run directory"):
        export(run, run)
    assert _snapshot(run) == before


def test_export_into_the_runs_parent_is_refused(export_dir, tmp_path):
    from unicl.training.export import export

    run = _fake_run(export_dir, tmp_path / "runs" / "a")
    sibling = _user_folder(tmp_path / "runs" / "b")
    with pytest.raises(ValueError, match="holds it"):
        export(run, tmp_path / "runs")
    assert _intact(sibling) and (run / "checkpoints" / "latest").is_file()


def test_export_over_a_user_folder_is_refused(export_dir, tmp_path):
    from unicl.training.export import export

    run = _fake_run(export_dir, tmp_path / "run")
    mine = _user_folder(tmp_path / "mine")
    with pytest.raises(ValueError, match="not a unicl export folder"):
        export(run, mine)
    assert _intact(mine)


def test_export_over_a_file_is_refused(export_dir, tmp_path):
    from unicl.training.export import export

    run = _fake_run(export_dir, tmp_path / "run")
    target = tmp_path / "model.bin"
    target.write_text("keep")
    with pytest.raises(ValueError, match="is a file"):
        export(run, target)
    assert target.read_text() == "keep"


def test_export_replaces_an_earlier_export_and_leaves_no_temporary(export_dir, tmp_path):
    import unicl
    from unicl.training.export import export

    run = _fake_run(export_dir, tmp_path / "run")
    out = export(run, tmp_path / "out")
    export(run, out)  # its own earlier export: replaced
    assert unicl.load(out, device="cpu") is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]


def test_interrupted_export_keeps_the_previous_export_loadable(export_dir, tmp_path, monkeypatch):
    import unicl
    from unicl import model_files
    from unicl.training.export import export

    run = _fake_run(export_dir, tmp_path / "run")
    out = export(run, tmp_path / "out")
    before = _snapshot(out)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(model_files, "save_weights", killed)
    with pytest.raises(KeyboardInterrupt):
        export(run, out)
    assert _snapshot(out) == before
    assert unicl.load(out, device="cpu") is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]


def test_save_model_refuses_a_user_folder(export_dir, tmp_path):
    import unicl
    from unicl.inference import save_model

    engine = unicl.load(export_dir, device="cpu").engine
    mine = _user_folder(tmp_path / "mine")
    with pytest.raises(ValueError, match="never deletes or overwrites"):
        save_model(engine.cfg, engine.model, engine.vocab, mine)
    assert _intact(mine)


# --------------------------------------------------------------------------- #
# data loss: runs, demo, worlds
# --------------------------------------------------------------------------- #


def test_training_into_a_user_folder_is_refused_before_any_work(tmp_path):
    from unicl.config import load_config, to_dict
    from unicl.training.run import preflight

    mine = _user_folder(tmp_path / "mine")
    (mine / "config.yaml").write_text("my: settings\n")
    cfg = load_config("shapes_tiny", [f"train.run_dir={mine}"])
    with pytest.raises(ValueError, match="train.run_dir"):
        preflight(cfg, to_dict(cfg))
    assert _intact(mine) and (mine / "config.yaml").read_text() == "my: settings\n"


def test_trainer_refuses_a_user_folder(tmp_path):
    mine = _user_folder(tmp_path / "mine")
    with pytest.raises(ValueError, match="train.run_dir"):
        toy.make_trainer(mine, steps=2).setup()
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]


def test_pruning_keeps_a_users_folders_under_checkpoints(tmp_path):
    toy.make_trainer(tmp_path / "run", steps=2, keep_checkpoints=2).run()
    ckpt = tmp_path / "run" / "checkpoints"
    for name in ("mine", ".tmp-mine", "step1"):
        _user_folder(ckpt / name)
        (ckpt / name / "config.yaml").write_text("x: 1\n")
    trainer = toy.make_trainer(tmp_path / "run", steps=6, save_every=1, keep_checkpoints=2)
    trainer.run()
    assert all(_intact(ckpt / n) for n in ("mine", ".tmp-mine", "step1"))
    assert trainer.checkpoints.tags() == ["step00000005", "step00000006"]


def test_latest_naming_a_path_outside_checkpoints_is_refused(tmp_path):
    from unicl.training.checkpoint import CheckpointManager

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("../../elsewhere\n")
    with pytest.raises(ValueError, match="not a checkpoint tag"):
        CheckpointManager(tmp_path / "checkpoints").latest()


def test_demo_retrain_refuses_a_folder_that_merely_holds_checkpoints(tmp_path):
    from unicl.demo import _clear_run

    mine = _user_folder(tmp_path / "mine")
    (mine / "checkpoints").mkdir()
    with pytest.raises(ValueError, match="--retrain --run"):
        _clear_run(mine)
    assert _intact(mine)


def test_demo_retrain_clears_its_own_run(export_dir, tmp_path):
    from unicl.demo import _clear_run

    run = _fake_run(export_dir, tmp_path / "run")
    _clear_run(run)
    assert not run.exists()


def test_demo_refuses_a_user_folder_as_results_before_work(tmp_path):
    from unicl.demo import DemoOptions, run_demo

    mine = _user_folder(tmp_path / "mine")
    with pytest.raises(ValueError, match="--out"):
        run_demo(DemoOptions(out=str(mine), run=str(tmp_path / "run")))
    assert _intact(mine) and not (tmp_path / "run").exists()


def test_make_world_refuses_a_folder_that_is_not_a_world(tmp_path):
    from unicl.tasks.world import WorldSpec, make_world

    mine = _user_folder(tmp_path / "coco")
    (mine / "annotations").mkdir()
    (mine / "annotations" / "instances_train2017.json").write_text("{}")
    with pytest.raises(ValueError, match="not a unicl world folder"):
        make_world(mine, WorldSpec(images=4, val_images=2, size=64), workers=1, progress=False)
    assert _intact(mine)
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
    from unicl.tasks.data import ensure_world

    mine = _user_folder(tmp_path / "data")
    cfg = load_config("shapes_tiny", [f"data.root={mine}"])
    with pytest.raises(ValueError, match="shapes world folder"):
        ensure_world(cfg.data)
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]


# --------------------------------------------------------------------------- #
# code execution
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("how", ["load", "export"])
def test_a_malicious_model_state_file_runs_no_code(export_dir, tmp_path, how):
    import unicl
    from unicl.training.export import export

    evidence = tmp_path / "pwned"
    run = _fake_run(export_dir, tmp_path / "run")
    model_file = run / "checkpoints" / "step00000002" / MODEL_STATES
    with open(model_file, "wb") as f:
        pickle.dump({"module": _Payload(evidence)}, f)
    with pytest.raises(ValueError, match="refusing to load"):
        if how == "load":
            unicl.load(run, device="cpu")
        else:
            export(run, tmp_path / "out")
    assert not evidence.exists() and not (tmp_path / "out").exists()


def test_a_malicious_optimiser_file_of_a_bf16_run_runs_no_code(export_dir, tmp_path):
    from safetensors.torch import load_file

    import unicl

    evidence = tmp_path / "pwned"
    state = {k: v.bfloat16() for k, v in load_file(str(export_dir / WEIGHTS_FILE)).items()}
    run = _fake_run(export_dir, tmp_path / "run", module=state)
    optim = run / "checkpoints" / "step00000002" / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"
    with open(optim, "wb") as f:
        pickle.dump(_Payload(evidence), f)
    with pytest.raises(ValueError, match="refusing to load"):
        unicl.load(run, device="cpu")
    assert not evidence.exists()


def test_resume_loads_through_the_safe_checkpoint_engine(tmp_path):
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import (
        TorchCheckpointEngine,
    )

    from unicl.training.engine import _safe_checkpoint_engine

    evidence = tmp_path / "pwned"
    bad = tmp_path / "bad.pt"
    with open(bad, "wb") as f:
        pickle.dump(_Payload(evidence), f)
    good = tmp_path / "good.pt"
    torch.save({"x": torch.ones(2), "step": 3}, good)
    engine = _safe_checkpoint_engine(TorchCheckpointEngine())
    assert engine.load(str(good))["step"] == 3
    with pytest.raises(ValueError, match="refusing to load"):
        engine.load(str(bad))
    assert not evidence.exists()


def test_a_malicious_rng_file_runs_no_code_on_resume(tmp_path):
    first = toy.make_trainer(tmp_path, steps=2)
    first.run()
    evidence = tmp_path / "pwned"
    rng = tmp_path / "checkpoints" / "step00000002" / "rng_rank0.pt"
    with open(rng, "wb") as f:
        pickle.dump(_Payload(evidence), f)
    with pytest.raises(ValueError, match="refusing to load"):
        toy.make_trainer(tmp_path, steps=4).setup()
    assert not evidence.exists()


@pytest.mark.parametrize("zero", [1, 2])
def test_resume_of_a_zero_run_works_through_the_safe_loader(tmp_path, zero):
    toy.make_trainer(tmp_path, steps=2, zero=zero).run()
    resumed = toy.make_trainer(tmp_path, steps=3, zero=zero)
    resumed.run()
    assert resumed.start_step == 2 and resumed.checkpoints.latest() == "step00000003"


def _export_with_plugins(export_dir: Path, out: Path, plugins: list[str]) -> Path:
    import shutil

    shutil.copytree(export_dir, out)
    config = yaml.safe_load((out / "config.yaml").read_text())
    config["plugins"] = plugins
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    return out


def test_plugins_named_by_a_model_folder_are_not_imported_without_permission(
    export_dir, tmp_path, monkeypatch
):
    import sys

    import unicl

    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    evidence = tmp_path / "pwned"
    (plugin_dir / "evil_plugin_xyz.py").write_text(f"open({str(evidence)!r}, 'w')\n")
    monkeypatch.syspath_prepend(str(plugin_dir))
    model = _export_with_plugins(export_dir, tmp_path / "m", ["evil_plugin_xyz"])
    with pytest.raises(ValueError, match="allow_plugins=True"):
        unicl.load(model, device="cpu")
    assert not evidence.exists() and "evil_plugin_xyz" not in sys.modules
    unicl.load(model, device="cpu", allow_plugins=True)
    assert evidence.exists()
    sys.modules.pop("evil_plugin_xyz", None)


def test_unicl_modules_as_plugins_need_no_permission(export_dir, tmp_path):
    import unicl

    model = _export_with_plugins(export_dir, tmp_path / "m", ["unicl.tokenizers.maskbits"])
    assert unicl.load(model, device="cpu") is not None


def test_export_refuses_plugins_without_permission(export_dir, tmp_path):
    from unicl.training.export import export

    run = _fake_run(export_dir, tmp_path / "run")
    config_file = run / "checkpoints" / "step00000002" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["plugins"] = ["some_module_nobody_trusts"]
    config_file.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="allow_plugins"):
        export(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- #
# loading never writes; unreadable files are named
# --------------------------------------------------------------------------- #


def test_loading_a_run_writes_nothing(export_dir, tmp_path):
    import unicl

    run = _fake_run(export_dir, tmp_path / "run")
    before = _snapshot(run)
    os.chmod(run, 0o555)  # read-only: a write would fail loudly
    try:
        model = unicl.load(run, device="cpu")
    finally:
        os.chmod(run, 0o755)
    assert model is not None and _snapshot(run) == before


def test_concurrent_loads_of_one_run_all_succeed(export_dir, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    import unicl

    run = _fake_run(export_dir, tmp_path / "run")
    with ThreadPoolExecutor(4) as pool:
        models = list(pool.map(lambda _: unicl.load(run, device="cpu"), range(4)))
    assert len(models) == 4 and sorted(p.name for p in run.iterdir()) == ["checkpoints", "run.json"]


def _broken_export(export_dir: Path, out: Path, name: str, content: bytes) -> Path:
    import shutil

    shutil.copytree(export_dir, out)
    (out / name).write_bytes(content)
    return out


@pytest.mark.parametrize(
    ("name", "content", "error", "match"),
    [
        (WEIGHTS_FILE, b"not safetensors", ValueError, "model.safetensors: not a readable"),
        (WEIGHTS_FILE, b"", ValueError, "model.safetensors: not a readable"),
        ("config.yaml", b"- a\n- list\n", ValueError, "config.yaml: expected a mapping"),
        ("config.yaml", b"model: [unclosed\n", ValueError, "config.yaml: not valid YAML"),
    ],
    ids=["garbage-weights", "empty-weights", "config-list", "config-bad-yaml"],
)
def test_unreadable_export_files_are_named(export_dir, tmp_path, name, content, error, match):
    import unicl

    out = _broken_export(export_dir, tmp_path / "m", name, content)
    with pytest.raises(error, match=match):
        unicl.load(out, device="cpu")


def test_truncated_weights_are_named(export_dir, tmp_path):
    import unicl

    data = (export_dir / WEIGHTS_FILE).read_bytes()
    out = _broken_export(export_dir, tmp_path / "m", WEIGHTS_FILE, data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors"):
        unicl.load(out, device="cpu")


def test_missing_tokenizer_files_are_named(export_dir, tmp_path):
    import shutil

    import unicl

    out = tmp_path / "m"
    shutil.copytree(export_dir, out)
    shutil.rmtree(out / "tokenizers" / "maskbits")
    with pytest.raises(FileNotFoundError, match="maskbits"):
        unicl.load(out, device="cpu")


def test_a_run_without_checkpoints_is_named(tmp_path):
    import unicl

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):
        unicl.load(tmp_path / "run", device="cpu")


def test_a_file_instead_of_a_model_folder_is_named(tmp_path):
    import unicl

    path = tmp_path / "model.safetensors"
    path.write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        unicl.load(path, device="cpu")


# --------------------------------------------------------------------------- #
# non-finite values
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "override",
    ["train.lr=.nan", "train.lr=.inf", "train.weight_decay=-.inf", "model.dropout=.nan"],
)
def test_non_finite_config_numbers_are_refused(override):
    from unicl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="finite"):
        load_config("shapes_tiny", [override])


def test_nan_weights_in_an_export_are_refused(export_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    import unicl

    out = tmp_path / "m"
    shutil.copytree(export_dir, out)
    state = load_file(str(out / WEIGHTS_FILE))
    key = next(iter(state))
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, str(out / WEIGHTS_FILE))
    with pytest.raises(ValueError, match="NaN or infinite"):
        unicl.load(out, device="cpu")


def test_nan_weights_in_a_run_are_refused(export_dir, tmp_path):
    from safetensors.torch import load_file

    import unicl

    state = load_file(str(export_dir / WEIGHTS_FILE))
    key = next(iter(state))
    state[key] = torch.full_like(state[key], float("inf"))
    run = _fake_run(export_dir, tmp_path / "run", module=state)
    with pytest.raises(ValueError, match="NaN or infinite"):
        unicl.load(run, device="cpu")


def test_a_checkpoint_is_saved_only_with_finite_weights(tmp_path):
    from unicl.training.trainer import TrainingDiverged

    trainer = toy.make_trainer(tmp_path, steps=2)
    trainer.setup()
    with torch.no_grad():
        trainer.engine.module.head.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="not saved"):
        trainer.save(1)
    assert trainer.checkpoints.latest() is None


def test_resuming_with_fewer_steps_than_done_is_refused(tmp_path):
    toy.make_trainer(tmp_path, steps=4).run()
    before = (tmp_path / "run.json").read_text()
    with pytest.raises(ValueError, match="past train.steps=2"):
        toy.make_trainer(tmp_path, steps=2).setup()
    assert (tmp_path / "run.json").read_text() == before


# --------------------------------------------------------------------------- #
# configs and caches
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", ["../../x", "a/b", ".hidden", "", "runs\\x"])
def test_a_run_name_that_is_not_a_folder_name_is_refused(name):
    from unicl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="name"):
        load_config("shapes_tiny", [f"name={name}"] if name else ["name=''"])


def test_a_missing_config_path_never_falls_back_to_a_packaged_config(tmp_path):
    from unicl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "configs" / "shapes_tiny.yaml"))
    assert load_config("shapes_tiny").name == "shapes-tiny"  # a bare name still works


def test_the_token_cache_key_follows_the_annotations(tmp_path):
    import dataclasses

    from unicl.data import _records_identity
    from unicl.tasks.records import CaptionRecord

    record = CaptionRecord(1, 1, tmp_path / "a.png", "circle", "a red circle", (0, 0, 8, 8), 16, 16)
    renamed = dataclasses.replace(record, phrase="a blue circle")
    moved = dataclasses.replace(record, box=(1, 0, 8, 8))
    keys = {_records_identity([("1", r)]) for r in (record, renamed, moved)}
    assert len(keys) == 3
    assert _records_identity([("1", record)]) == _records_identity([("1", record)])


def test_a_bf16_export_is_half_the_size_and_loads(export_dir, tmp_path):
    import unicl
    from unicl.training.export import export

    run = _fake_run(export_dir, tmp_path / "run")
    full = export(run, tmp_path / "fp32")
    half = export(run, tmp_path / "bf16", dtype=torch.bfloat16)
    ratio = (half / WEIGHTS_FILE).stat().st_size / (full / WEIGHTS_FILE).stat().st_size
    assert 0.45 < ratio < 0.55
    a, b = unicl.load(full, device="cpu"), unicl.load(half, device="cpu")
    for (name, p), q in zip(
        a.engine.model.state_dict().items(), b.engine.model.state_dict().values()
    ):
        assert torch.allclose(p.float(), q.float(), rtol=1e-2, atol=1e-2), name


# --------------------------------------------------------------------------- #
# found by a review pass: recognition, symlinks, outputs, plugins, tokenizer weights
# --------------------------------------------------------------------------- #


def test_retrain_refuses_a_user_folder_that_holds_a_run_json(tmp_path):
    from unicl.demo import _clear_run

    mine = _user_folder(tmp_path / "proj")
    (mine / "run.json").write_text('{"experiment": "mine"}')
    with pytest.raises(ValueError, match="--retrain --run"):
        _clear_run(mine)
    assert _intact(mine) and (mine / "run.json").is_file()


def test_retrain_keeps_files_a_user_added_to_a_run(export_dir, tmp_path):
    from unicl.demo import _clear_run
    from unicl.ownership import claim

    run = _fake_run(export_dir, tmp_path / "run")
    claim(run, "run", "test")
    (run / "notes.txt").write_text("mine")
    _clear_run(run)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


def test_train_vqgan_refuses_a_user_folder(tmp_path):
    from unicl.tokenizers.vqgan_train import VQGANTrainConfig, train_vqgan

    mine = _user_folder(tmp_path / "vq")
    (mine / "train_log.jsonl").write_text("my notes\n")
    with pytest.raises(ValueError, match="out: .* is not a unicl vqgan folder"):
        train_vqgan(VQGANTrainConfig(out=str(mine), steps=1))
    assert _intact(mine) and (mine / "train_log.jsonl").read_text() == "my notes\n"


def test_export_onto_a_symlink_is_refused_and_the_link_kept(export_dir, tmp_path):
    from unicl.training.export import export

    run = _fake_run(export_dir, tmp_path / "run")
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

    run = _fake_run(export_dir, tmp_path / "run")
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


@pytest.mark.parametrize("allow", ["false", "no", 1, None])
def test_allow_plugins_must_be_a_bool(export_dir, tmp_path, allow):
    import unicl

    model = _export_with_plugins(export_dir, tmp_path / "m", ["some_plugin_xyz"])
    with pytest.raises(TypeError, match="allow_plugins must be True or False"):
        unicl.load(model, device="cpu", allow_plugins=allow)


@pytest.mark.parametrize("module", ["unicl.__main__", "unicl.cli", "unicl.commands.train"])
def test_unicl_modules_that_run_programs_need_permission(export_dir, tmp_path, module):
    import sys

    import unicl

    sys.modules.pop(module, None)
    model = _export_with_plugins(export_dir, tmp_path / "m", [module])
    with pytest.raises(ValueError, match="allow_plugins=True"):
        unicl.load(model, device="cpu")


def test_a_plugin_that_exits_while_imported_is_an_error(export_dir, tmp_path, monkeypatch):
    import unicl

    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "exiting_plugin_xyz.py").write_text("import sys\nsys.exit(0)\n")
    monkeypatch.syspath_prepend(str(plugin_dir))
    model = _export_with_plugins(export_dir, tmp_path / "m", ["exiting_plugin_xyz"])
    with pytest.raises(ImportError, match="exited while being imported"):
        unicl.load(model, device="cpu", allow_plugins=True)


def test_nan_tokenizer_weights_are_refused(export_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    import unicl

    out = tmp_path / "m"
    shutil.copytree(export_dir, out)
    path = out / "tokenizers" / "vqgan" / "vqgan.safetensors"
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
             for k, v in load_file(str(path)).items()}  # fmt: skip
    save_file(state, str(path))
    with pytest.raises(ValueError, match="vqgan.safetensors.*NaN or infinite"):
        unicl.load(out, device="cpu")


def test_the_weights_identity_follows_the_checkpoint(export_dir, tmp_path):
    from unicl.model_files import read_model

    run = _fake_run(export_dir, tmp_path / "run")
    first = read_model(run).identity
    tag = run / "checkpoints" / "step00000004"
    tag.mkdir()
    for path in (run / "checkpoints" / "step00000002").iterdir():
        (tag / path.name).write_bytes(path.read_bytes())
    (run / "checkpoints" / "latest").write_text("step00000004\n")
    assert read_model(run).identity != first


@pytest.mark.parametrize(
    ("override", "error"),
    [
        ("tasks.segmentation.context_max=.inf", ValueError),
        ("tasks.captioning.input_image_weight=.nan", ValueError),
        ("tasks.segmentation.cache_views=.nan", TypeError),
        ("tasks.segmentation.image_size=64.5", TypeError),
        ("tasks.segmentation.shots=2.5", TypeError),
        ("tasks.segmentation.shots=true", TypeError),
        ("tasks.captioning.rename_prob=abc", TypeError),
    ],
)
def test_task_options_are_typed_and_finite(override, error):
    from unicl.config import load_config
    from unicl.data import build_tasks

    with pytest.raises(error, match="option"):
        build_tasks(load_config("shapes_tiny", [override]))


@pytest.mark.parametrize(("path", "error"), [(123, TypeError), (None, TypeError), ("", ValueError)])
def test_load_names_a_bad_path_argument(path, error):
    import unicl

    with pytest.raises(error, match="path"):
        unicl.load(path)


def test_a_run_dir_below_a_file_is_refused_before_any_work(tmp_path):
    from unicl.config import load_config, to_dict
    from unicl.training.run import preflight

    (tmp_path / "img.png").write_bytes(b"x")
    cfg = load_config("shapes_tiny", [f"train.run_dir={tmp_path / 'img.png' / 'sub'}"])
    with pytest.raises(ValueError, match="lies below .*img.png"):
        preflight(cfg, to_dict(cfg))


def test_an_unknown_builtin_model_lists_the_shipped_ones():
    import unicl
    from unicl.model_files import builtin_models

    with pytest.raises(ValueError, match="no shipped model builtin:nope; shipped: ") as info:
        unicl.load("builtin:nope")
    assert all(f"builtin:{name}" in str(info.value) for name in builtin_models())


def test_shipped_models_are_looked_for_in_the_package():
    from unicl.model_files import _models_root

    root = _models_root()
    assert root.parent.name == "assets" and root.parent.parent.name == "unicl"
    assert root.parent.is_dir()
