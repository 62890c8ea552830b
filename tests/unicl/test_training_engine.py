"""DeepSpeed engine, trainer loop, checkpoints, resume, NaN guard (CPU, 1 rank, toy model)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from unicl.training import engine as ds_engine
from unicl.training.checkpoint import CheckpointManager, check_compatible
from unicl.training.config import TrainConfig
from unicl.training.trainer import TrainingDiverged


def _load_toy():
    path = Path(__file__).with_name("training_toy.py")
    spec = importlib.util.spec_from_file_location("unicl_training_toy", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


toy = _load_toy()


def params_of(trainer) -> torch.Tensor:
    return torch.cat([p.detach().float().reshape(-1) for p in trainer.engine.module.parameters()])


# --------------------------------------------------------------------------- #
# DeepSpeed config
# --------------------------------------------------------------------------- #


def test_deepspeed_config_fills_batch_clip_and_precision():
    train = TrainConfig(batch_size=16, micro_batch=2, grad_clip=0.5, precision="fp32")
    cfg = ds_engine.deepspeed_config({"zero_optimization": {"stage": 1}}, train, world_size=4)
    assert cfg["train_batch_size"] == 16
    assert cfg["train_micro_batch_size_per_gpu"] == 2
    assert cfg["gradient_accumulation_steps"] == 2
    assert cfg["gradient_clipping"] == 0.5
    assert cfg["bf16"] == {"enabled": False}
    bf16 = ds_engine.deepspeed_config(
        {"zero_optimization": {"stage": 1}}, TrainConfig(precision="bf16"), 1
    )
    assert bf16["bf16"]["enabled"] and bf16["data_types"]["grad_accum_dtype"] == "fp32"


@pytest.mark.parametrize(
    "user, match",
    [
        ({"optimizer": {"type": "Adam"}}, "deepspeed.optimizer"),
        ({"train_batch_size": 32}, "train_batch_size"),
        ({"zero_optimization": {"stage": 3}}, "stage=3"),
        ({"bf16": {"enabled": True}}, "precision"),
    ],
)
def test_deepspeed_config_conflicts_are_clear(user, match):
    with pytest.raises(ValueError, match=match):
        ds_engine.deepspeed_config(user, TrainConfig(batch_size=16, precision="fp32"), 1)


def test_batch_that_does_not_split_over_ranks_is_refused():
    with pytest.raises(ValueError, match="not divisible"):
        ds_engine.deepspeed_config({}, TrainConfig(batch_size=12, micro_batch=4), world_size=2)


# --------------------------------------------------------------------------- #
# training, resume, crash safety
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("zero", [0, 1])
def test_trains_logs_and_checkpoints(tmp_path, zero):
    trainer = toy.make_trainer(tmp_path, steps=8, zero=zero)
    trainer.setup()
    before = params_of(trainer)
    history = trainer.run()
    assert len(history) == 8 and len({s.task for s in history}) == 2
    assert not torch.equal(before, params_of(trainer))
    shift = [s.ce for s in history if s.task == "shift"]
    assert shift[-1] < shift[0]
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(8))
    assert {"ce", "aux", "lr", "grad_norm", "tokens_per_s", "task"} <= set(records[0])
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert CheckpointManager(tmp_path / "checkpoints").latest() == "step00000008"


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    straight = toy.make_trainer(tmp_path / "a", steps=8).run()
    first = toy.make_trainer(tmp_path / "b", steps=8)
    first.train.save_every = 4
    first.setup()
    # stop after 4 steps as if killed: run to a 4-step horizon would change the schedule
    for step in range(4):
        first.train_step(step)
    first.save(4)
    resumed = toy.make_trainer(tmp_path / "b", steps=8)
    resumed.setup()
    assert resumed.start_step == 4
    rest = resumed.run()
    assert [s.step for s in rest] == [4, 5, 6, 7]
    assert [(s.task, s.ce) for s in rest] == [(s.task, s.ce) for s in straight[4:]]


def test_crash_during_save_keeps_the_last_good_checkpoint(tmp_path):
    trainer = toy.make_trainer(tmp_path, steps=4)
    trainer.setup()
    trainer.train_step(0)
    good = trainer.save(1)
    good_params = params_of(trainer)
    trainer.train_step(1)
    real_save = trainer.engine.save_checkpoint

    def crashing_save(save_dir, tag, **kwargs):
        real_save(save_dir, tag=tag, **kwargs)  # files land in the temporary dir ...
        raise OSError("disk full")  # ... then the save dies

    trainer.engine.save_checkpoint = crashing_save
    with pytest.raises(OSError, match="disk full"):
        trainer.save(2)
    manager = CheckpointManager(tmp_path / "checkpoints")
    assert manager.latest() == good
    assert manager.tags() == [good]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    again = toy.make_trainer(tmp_path, steps=4)
    again.setup()
    assert again.start_step == 1
    torch.testing.assert_close(params_of(again), good_params, rtol=0, atol=0)


def test_nan_loss_stops_before_the_update_and_names_step_and_task(tmp_path):
    trainer = toy.make_trainer(tmp_path, steps=6, save_every=2)
    real_loss = trainer.loss_fn

    def nan_at_step_3(model, batch):
        out = real_loss(model, batch)
        if trainer.engine.global_steps == 3:
            out.ce = out.ce * float("nan")
            out.loss = out.loss * float("nan")
        return out

    trainer.loss_fn = nan_at_step_3
    trainer.setup()
    with pytest.raises(TrainingDiverged, match=r"step 3 on task '(copy|shift)'") as info:
        trainer.run()
    assert "step00000002" in str(info.value)
    assert torch.isfinite(params_of(trainer)).all()
    assert CheckpointManager(tmp_path / "checkpoints").latest() == "step00000002"
    events = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "diverged" and events[-1]["step"] == 3


def test_resume_with_another_model_or_batch_is_refused_before_work(tmp_path):
    toy.make_trainer(tmp_path, steps=2).run()
    other = toy.make_trainer(tmp_path, steps=4, batch_size=8)
    other.config["model"] = {"d_model": 64}
    with pytest.raises(ValueError, match=r"train.batch_size: checkpoint 4, config 8") as info:
        other.setup()
    assert "model" in str(info.value)
    assert not hasattr(other, "engine")
    never = toy.make_trainer(tmp_path, steps=4, resume="never")
    with pytest.raises(ValueError, match="resume=never"):
        never.setup()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        toy.make_trainer(tmp_path / "fresh", resume="require").setup()


def test_check_compatible_lists_every_difference():
    saved = {"model": {"n_layer": 4, "d_model": 256}, "seed": 0, "train": {"batch_size": 8}}
    now = {"model": {"n_layer": 6, "d_model": 256}, "seed": 1, "train": {"batch_size": 8}}
    with pytest.raises(ValueError) as info:
        check_compatible(saved, now, keys=("model", "seed", "train.batch_size"))
    assert "model.n_layer: checkpoint 4, config 6" in str(info.value)
    assert "seed: checkpoint 0, config 1" in str(info.value)
