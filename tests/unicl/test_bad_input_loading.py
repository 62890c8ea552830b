"""Bad input over files, part 2: loading runs no code from a file and writes nothing,
unreadable files are named, non-finite values and ill-typed options are refused where they
enter (unicl/model_files.py, unicl/plugins.py, unicl/config.py, unicl/registry.py)."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
import yaml

from unicl.model_files import MODEL_STATES, WEIGHTS_FILE

from . import training_toy as toy
from .bad_files import (
    Payload,
    broken_export,
    export_with_plugins,
    fake_run,
    snapshot,
)


@pytest.mark.parametrize("how", ["load", "export"])
def test_a_malicious_model_state_file_runs_no_code(export_dir, tmp_path, how):
    import unicl
    from unicl.training.export import export

    evidence = tmp_path / "pwned"
    run = fake_run(export_dir, tmp_path / "run")
    model_file = run / "checkpoints" / "step00000002" / MODEL_STATES
    with open(model_file, "wb") as f:
        pickle.dump({"module": Payload(evidence)}, f)
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
    run = fake_run(export_dir, tmp_path / "run", module=state)
    optim = run / "checkpoints" / "step00000002" / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"
    with open(optim, "wb") as f:
        pickle.dump(Payload(evidence), f)
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
        pickle.dump(Payload(evidence), f)
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
        pickle.dump(Payload(evidence), f)
    with pytest.raises(ValueError, match="refusing to load"):
        toy.make_trainer(tmp_path, steps=4).setup()
    assert not evidence.exists()


@pytest.mark.parametrize("zero", [1, 2])
def test_resume_of_a_zero_run_works_through_the_safe_loader(tmp_path, zero):
    toy.make_trainer(tmp_path, steps=2, zero=zero).run()
    resumed = toy.make_trainer(tmp_path, steps=3, zero=zero)
    resumed.run()
    assert resumed.start_step == 2 and resumed.checkpoints.latest() == "step00000003"


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
    model = export_with_plugins(export_dir, tmp_path / "m", ["evil_plugin_xyz"])
    with pytest.raises(ValueError, match="allow_plugins=True"):
        unicl.load(model, device="cpu")
    assert not evidence.exists() and "evil_plugin_xyz" not in sys.modules
    unicl.load(model, device="cpu", allow_plugins=True)
    assert evidence.exists()
    sys.modules.pop("evil_plugin_xyz", None)


def test_unicl_modules_as_plugins_need_no_permission(export_dir, tmp_path):
    import unicl

    model = export_with_plugins(export_dir, tmp_path / "m", ["unicl.tokenizers.maskbits"])
    assert unicl.load(model, device="cpu") is not None


def test_export_refuses_plugins_without_permission(export_dir, tmp_path):
    from unicl.training.export import export

    run = fake_run(export_dir, tmp_path / "run")
    config_file = run / "checkpoints" / "step00000002" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["plugins"] = ["some_module_nobody_trusts"]
    config_file.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="allow_plugins"):
        export(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_loading_a_run_writes_nothing(export_dir, tmp_path):
    import unicl

    run = fake_run(export_dir, tmp_path / "run")
    before = snapshot(run)
    os.chmod(run, 0o555)  # read-only: a write would fail loudly
    try:
        model = unicl.load(run, device="cpu")
    finally:
        os.chmod(run, 0o755)
    assert model is not None and snapshot(run) == before


def test_concurrent_loads_of_one_run_all_succeed(export_dir, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    import unicl

    run = fake_run(export_dir, tmp_path / "run")
    with ThreadPoolExecutor(4) as pool:
        models = list(pool.map(lambda _: unicl.load(run, device="cpu"), range(4)))
    assert len(models) == 4 and sorted(p.name for p in run.iterdir()) == ["checkpoints", "run.json"]


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

    out = broken_export(export_dir, tmp_path / "m", name, content)
    with pytest.raises(error, match=match):
        unicl.load(out, device="cpu")


def test_truncated_weights_are_named(export_dir, tmp_path):
    import unicl

    data = (export_dir / WEIGHTS_FILE).read_bytes()
    out = broken_export(export_dir, tmp_path / "m", WEIGHTS_FILE, data[: len(data) // 2])
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
    run = fake_run(export_dir, tmp_path / "run", module=state)
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

    from unicl.tasks.records import CaptionRecord
    from unicl.token_cache import _records_identity

    record = CaptionRecord(1, 1, tmp_path / "a.png", "circle", "a red circle", (0, 0, 8, 8), 16, 16)
    renamed = dataclasses.replace(record, phrase="a blue circle")
    moved = dataclasses.replace(record, box=(1, 0, 8, 8))
    keys = {_records_identity([("1", r)]) for r in (record, renamed, moved)}
    assert len(keys) == 3
    assert _records_identity([("1", record)]) == _records_identity([("1", record)])


def test_a_bf16_export_is_half_the_size_and_loads(export_dir, tmp_path):
    import unicl
    from unicl.training.export import export

    run = fake_run(export_dir, tmp_path / "run")
    full = export(run, tmp_path / "fp32")
    half = export(run, tmp_path / "bf16", dtype=torch.bfloat16)
    ratio = (half / WEIGHTS_FILE).stat().st_size / (full / WEIGHTS_FILE).stat().st_size
    assert 0.45 < ratio < 0.55
    a, b = unicl.load(full, device="cpu"), unicl.load(half, device="cpu")
    for (name, p), q in zip(
        a.predictor.model.state_dict().items(), b.predictor.model.state_dict().values()
    ):
        assert torch.allclose(p.float(), q.float(), rtol=1e-2, atol=1e-2), name


@pytest.mark.parametrize("allow", ["false", "no", 1, None])
def test_allow_plugins_must_be_a_bool(export_dir, tmp_path, allow):
    import unicl

    model = export_with_plugins(export_dir, tmp_path / "m", ["some_plugin_xyz"])
    with pytest.raises(TypeError, match="allow_plugins must be True or False"):
        unicl.load(model, device="cpu", allow_plugins=allow)


@pytest.mark.parametrize("module", ["unicl.__main__", "unicl.cli", "unicl.commands.train"])
def test_unicl_modules_that_run_programs_need_permission(export_dir, tmp_path, module):
    import sys

    import unicl

    sys.modules.pop(module, None)
    model = export_with_plugins(export_dir, tmp_path / "m", [module])
    with pytest.raises(ValueError, match="allow_plugins=True"):
        unicl.load(model, device="cpu")


def test_a_plugin_that_exits_while_imported_is_an_error(export_dir, tmp_path, monkeypatch):
    import unicl

    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "exiting_plugin_xyz.py").write_text("import sys\nsys.exit(0)\n")
    monkeypatch.syspath_prepend(str(plugin_dir))
    model = export_with_plugins(export_dir, tmp_path / "m", ["exiting_plugin_xyz"])
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

    run = fake_run(export_dir, tmp_path / "run")
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
    from unicl.streams import build_tasks

    with pytest.raises(error, match="option"):
        build_tasks(load_config("shapes_tiny", [override]))


@pytest.mark.parametrize(("path", "error"), [(123, TypeError), (None, TypeError), ("", ValueError)])
def test_load_names_a_bad_path_argument(path, error):
    import unicl

    with pytest.raises(error, match="path"):
        unicl.load(path)


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
