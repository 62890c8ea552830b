"""`unicl train` / `unicl export` on a small shapes world: real data, model, loss and checks.

A fresh (untrained) tiny VQ-GAN is used so that the test depends on no shipped
weights; the world, token caches and runs live in a temporary directory.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import subprocess
import sys

import pytest
import torch

from unicl.config import load_config
from unicl.training import run as run_module
from unicl.training.run import build_trainer, train

FRESH_VQGAN = (
    "tokenizers=[{name: gpt2}, {name: bins}, {name: vqgan, checkpoint: null, config: "
    "{resolution: 64, ch: 32, ch_mult: [1, 1, 1, 1], num_res_blocks: 0, attn_resolutions: [], "
    "z_channels: 32, n_embed: 1024, embed_dim: 16}}, {name: maskbits}]"
)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("training-run")
    return [
        f"data.root={root / 'world'}",
        "data.images=24",
        "data.val_images=8",
        "data.min_descriptions=1",
        FRESH_VQGAN,
        f"tasks.segmentation.cache_dir={root / 'tokens'}",
        f"tasks.captioning.cache_dir={root / 'tokens'}",
        "tasks.segmentation.cache_views=1",
        "tasks.captioning.cache_views=1",
        "train.batch_size=2",
        "train.micro_batch=1",
        "train.warmup_steps=1",
        "train.log_every=1",
        "train.tensorboard=false",
    ]


def run_cfg(base, run_dir, *extra):
    return load_config("shapes_tiny", [*base, f"train.run_dir={run_dir}", *extra])


def test_train_resume_and_export(base, tmp_path):
    from safetensors.torch import load_file

    from unicl import cli

    run = tmp_path / "run"
    first = train(run_cfg(base, run, "train.steps=2"), progress=False)
    assert len(first.history) == 2
    assert all(math.isfinite(s.ce) and s.tokens > 0 for s in first.history)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records[0]["expert_load"]) == 2  # MoE on layers 1 and 3
    assert (run / "curves.png").is_file() and (run / "run.json").is_file()
    # a longer horizon on the same run continues from step 2
    more = train(run_cfg(base, run, "train.steps=3"), progress=False)
    assert more.start_step == 2 and [s.step for s in more.history] == [2]

    out = tmp_path / "exported"
    assert cli.main(["export", str(run), str(out)]) == 0
    cfg = load_config(out / "config.yaml")
    for spec in cfg.tokenizers:
        assert (out / "tokenizers" / spec["name"] / "tokenizer.json").is_file()
    weights = load_file(str(out / "model.safetensors"))
    # every key of the model, fp32, equal to the trained weights; loads strictly
    copy.deepcopy(more.engine.module).load_state_dict(weights, strict=True)
    for name, param in more.engine.module.state_dict().items():
        assert weights[name].dtype == torch.float32
        torch.testing.assert_close(weights[name], param.float(), rtol=0, atol=0)


def test_resume_with_another_model_fails_before_any_work(base, tmp_path):
    run = tmp_path / "run"
    train(run_cfg(base, run, "train.steps=1"), progress=False)
    with pytest.raises(ValueError, match=r"model.n_layer: checkpoint 4, config 2"):
        build_trainer(run_cfg(base, run, "model.n_layer=2"), progress=False)


def test_a_run_saved_before_an_option_existed_resumes(base, tmp_path):
    import yaml

    run = tmp_path / "run"
    train(run_cfg(base, run, "train.steps=1"), progress=False)
    saved = run / "checkpoints" / "step00000001" / "config.yaml"
    config = yaml.safe_load(saved.read_text())
    del config["model"]["copy_values"]  # as written before the option existed
    saved.write_text(yaml.safe_dump(config))
    more = train(run_cfg(base, run, "train.steps=2"), progress=False)
    assert more.start_step == 1
    with pytest.raises(ValueError, match=r"model.copy_values: checkpoint 'rows', config 'tok"):
        build_trainer(run_cfg(base, run, "train.steps=3", "model.copy_values=tokens"))


def test_fine_tune_starts_from_another_runs_weights(base, tmp_path):
    first = tmp_path / "first"
    trained = train(run_cfg(base, first, "train.steps=1"), progress=False).engine.module
    # other tasks options and schedule: a fine-tune; the weights are the first run's
    tune = run_cfg(
        base,
        tmp_path / "tune",
        f"train.init_from={first}",
        "tasks.captioning.rename_prob=0.5",
        "model.dropout=0.1",
        "model.copy_values=tokens",
        "train.steps=1",
    )
    start = build_trainer(tune, progress=False).model.state_dict()
    for name, weight in trained.state_dict().items():
        assert torch.equal(start[name], weight), name
    fresh = build_trainer(run_cfg(base, tmp_path / "fresh", "train.steps=1"), progress=False)
    differs = [n for n, w in fresh.model.state_dict().items() if not torch.equal(w, start[n])]
    assert differs  # a run without init_from starts from random weights
    # a model of another shape is refused before any work, naming the difference
    other = run_cfg(base, tmp_path / "other", f"train.init_from={first}", "model.n_layer=2")
    with pytest.raises(ValueError, match=r"init_from needs the same model(.|\n)*model.n_layer"):
        run_module.preflight(other, run_module.to_dict(other))


def test_bad_inputs_are_clear_errors(base, tmp_path):
    with pytest.raises(FileNotFoundError, match="data.coco_train_ann"):
        build_trainer(
            run_cfg(base, tmp_path / "a", f"data.coco_train_ann={tmp_path / 'nope.json'}"),
            progress=False,
        )
    with pytest.raises(ValueError, match="max_positions"):
        build_trainer(run_cfg(base, tmp_path / "b", "model.max_positions=200"), progress=False)
    with pytest.raises(ValueError, match="micro_batch"):
        load_config("shapes_tiny", ["train.batch_size=3", "train.micro_batch=2"])


@pytest.mark.slow
def test_paper_config_builds_and_takes_one_step(base, tmp_path):
    cfg = load_config(
        "m2oegpt_coco",
        [
            *[o for o in base if not o.startswith("train.")],
            *[
                f"data.{k}="
                for k in (
                    "coco_train_ann",
                    "coco_val_ann",
                    "coco_train_images",
                    "coco_val_images",
                    "vg_train_regions",
                    "vg_val_regions",
                    "vg_images",
                    "vg_image_data",
                )
            ],
            # the fresh tokenizer is f8: 128 px crops give the paper's 16x16 = 256 codes
            "tasks.segmentation.image_size=128",
            "tasks.captioning.image_size=128",
            "train.batch_size=1",
            "train.micro_batch=1",
            "train.precision=fp32",
            "train.tensorboard=false",
            f"train.run_dir={tmp_path / 'paper'}",
        ],
    )
    assert (cfg.model.n_layer, cfg.model.d_model, cfg.model.num_experts) == (12, 768, 8)
    assert cfg.model.moe_layer_indices() == [1, 3, 5, 7, 9, 11]
    trainer = build_trainer(cfg, progress=False)
    trainer.setup()
    assert trainer.ds_config["zero_optimization"]["stage"] == 1
    before = trainer.engine.module.wte.weight.detach().clone()
    stats = trainer.train_step(0)
    assert math.isfinite(stats.ce) and stats.seq_tokens <= 2060
    assert not torch.equal(before, trainer.engine.module.wte.weight)


def test_train_command_reports_config_errors(capsys):
    from unicl.cli import main

    assert main(["train", "shapes_tiny", "train.batch_size=3", "train.micro_batch=2"]) == 2
    assert "train.batch_size (3) must be a multiple of train.micro_batch (2)" in (
        capsys.readouterr().err
    )
    assert main(["train", "shapes_tiny", "train.optimizer=sgd"]) == 2
    assert "adamw" in capsys.readouterr().err


GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

REUSE_FAULTS = """
import resource, torch
from unicl.training.run import retain_freed_memory

def faults_of_reuse():
    torch.ones(16 * 2**20)  # 64 MiB, freed at once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 * 2**20)  # the same size again
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

plain = faults_of_reuse()
assert retain_freed_memory()
for _ in range(8):  # the heap grows over the first few blocks, then holds one free for reuse
    faults_of_reuse()
print(plain, sum(faults_of_reuse() for _ in range(4)))
"""


@pytest.mark.skipif(not GLIBC, reason="glibc malloc only")
def test_retain_freed_memory_reuses_pages():
    # a separate process: the switch is process-wide and lasts until exit
    out = subprocess.run([sys.executable, "-c", REUSE_FAULTS], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    plain, retained = map(int, out.stdout.split())
    if plain < 1000:
        pytest.skip(f"{plain} faults for 64 MiB: huge pages hide the effect here")
    assert retained < plain / 4  # four reuses: no more page faults than a quarter of one


@pytest.mark.parametrize("setting", ["retain", "default"])
def test_cpu_malloc_setting_is_applied(base, tmp_path, monkeypatch, setting):
    calls = []
    monkeypatch.setattr(run_module, "retain_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    build_trainer(run_cfg(base, tmp_path / "run", f"train.cpu_malloc={setting}"), progress=False)
    assert len(calls) == (setting == "retain")
