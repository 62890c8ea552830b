"""The demo's pictures and pipeline (unicl/demo.py)."""

import dataclasses
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unicl.demo import CELL, GridRow, overlay, render_grid


def _row(k, unseen=False):
    rng = np.random.default_rng(k)
    img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    mask = np.zeros((40, 50), bool)
    mask[5:20, 10:30] = True
    return GridRow("star", unseen, [(img, mask)] * k, img, mask, ~mask, iou=0.5)


def test_overlay_tints_only_the_mask():
    img = np.full((6, 6, 3), 100, np.uint8)
    mask = np.zeros((6, 6), bool)
    mask[1:5, 1:5] = True
    out = overlay(img, mask)
    assert (out[~mask] == 100).all()
    assert (out[2, 2, 0] > 100) and (out[2, 2, 1] < 100)  # inside: tinted red
    assert (out[1, 1] == 255).all() and (out[1, 3] == 255).all()  # edge: outlined


def test_grid_size(tmp_path):
    path = render_grid([_row(3), _row(1, unseen=True)], tmp_path / "grid.png")
    with Image.open(path) as im:
        # widest row: 3 demos + query + prediction + truth
        assert im.width > 6 * CELL and im.height > 2 * CELL


TINY_CONFIG = """
base: shapes_tiny
name: demo-test
data:
  root: {root}/world
  images: 40
  val_images: 48
  size: 64
  workers: 1
  min_descriptions: 5
tokenizers:
  - name: gpt2
  - name: vqgan
    checkpoint: null
    config: {{resolution: 16, ch: 32, ch_mult: [1, 1, 1], num_res_blocks: 0, z_channels: 32,
             n_embed: 64, embed_dim: 16}}
  - name: bins
  - {{name: maskbits, grid: 4, cells: 2, size: 16}}
tasks:
  segmentation: {{shots: 3, image_size: 16, cache_views: 1}}
  captioning: {{shots: 3, image_size: 16, cache_views: 1, pad_to_image_length: false}}
model: {{n_layer: 1, n_head: 2, d_model: 32, d_ff: 64, num_experts: 2}}
train: {{steps: 2, batch_size: 2, micro_batch: 2, warmup_steps: 1, save_every: 0, log_every: 1,
        plot_every: 2}}
"""


def test_pipeline_end_to_end_and_reuse(tmp_path, monkeypatch, capsys):
    """The whole demo on a tiny world and a 2-step run; a second run reuses everything."""
    from unicl import demo

    monkeypatch.chdir(tmp_path)
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG.format(root=tmp_path))
    opts = demo.DemoOptions(
        config=str(config),
        run=str(tmp_path / "run"),
        out=str(tmp_path / "results"),
        shots=(1,),
        queries_per_category=1,
        max_tokens=3,
        progress=False,
    )
    out = demo.run_demo(opts)
    for name in ("grid.png", "captions.md", "metrics.md", "metrics.json", "loss.png"):
        assert (out / name).is_file(), name
    metrics = (out / "metrics.md").read_text()
    assert "## segmentation" in metrics and "## captioning" in metrics
    assert "| copy demo mask | 1 |" in metrics
    captions = (out / "captions.md").read_text().splitlines()
    assert len(captions) > 3 and "unseen" in "\n".join(captions)
    with Image.open(out / "grid.png") as im:
        assert im.height > 3 * CELL  # several categories, seen and unseen
    assert demo.run_finished(tmp_path / "run", 2)
    printed = capsys.readouterr().out
    assert "training demo-test" in printed and str(out) in printed

    run_json = (tmp_path / "run" / "run.json").stat().st_mtime_ns
    eval_json = (tmp_path / "run" / "eval" / "eval_segmentation.json").stat().st_mtime_ns
    demo.run_demo(opts)
    printed = capsys.readouterr().out
    assert "reusing the finished run" in printed and "reusing" in printed.split("3/4")[1]
    assert (tmp_path / "run" / "run.json").stat().st_mtime_ns == run_json
    assert (tmp_path / "run" / "eval" / "eval_segmentation.json").stat().st_mtime_ns == eval_json


def test_retrain_refuses_a_directory_that_is_not_a_run(tmp_path):
    import pytest

    from unicl import demo

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a unicl run folder"):
        demo._clear_run(tmp_path / "notes")
    assert (tmp_path / "notes" / "keep.txt").is_file()


def test_the_shipped_model_is_evaluated_without_training(tmp_path, monkeypatch, capsys):
    """With a shipped model for the config, `unicl demo` evaluates it; --retrain trains one
    from scratch and writes its results beside the shipped model's."""
    from unicl import demo, model_files
    from unicl.config import load_config
    from unicl.training.export import export
    from unicl.training.run import train

    monkeypatch.chdir(tmp_path)
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG.format(root=tmp_path))
    train(load_config(str(config), [f"train.run_dir={tmp_path / 'trained'}"]), progress=False)
    models = tmp_path / "assets" / "models"
    export(tmp_path / "trained", models / "demo_test", dtype=torch.bfloat16)
    monkeypatch.setattr(model_files, "_models_root", lambda: models)
    capsys.readouterr()

    opts = demo.DemoOptions(
        config=str(config), shots=(1,), queries_per_category=1, max_tokens=3, progress=False
    )
    out = demo.run_demo(opts)
    printed = capsys.readouterr().out
    assert "using the shipped model builtin:demo_test" in printed and "training" not in printed
    assert out == Path("results") / "demo-test" and not Path("runs").exists()
    for name in ("grid.png", "metrics.md", "loss.png"):  # loss.png: the shipped training log
        assert (out / name).is_file(), name

    again = demo.run_demo(dataclasses.replace(opts, retrain=True))
    printed = capsys.readouterr().out
    assert again == Path("results") / "demo-test-retrained" and "training demo-test" in printed
    assert (again / "metrics.md").is_file() and (out / "metrics.md").is_file()
