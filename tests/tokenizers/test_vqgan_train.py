"""VQ-GAN training: EMA codebook, dead-code restarts, metrics, a tiny run with resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unicl.config import ConfigError, from_dict
from unicl.tokenizers import load_tokenizer
from unicl.tokenizers.vqgan_codebook import CodebookEMA, perplexity
from unicl.tokenizers.vqgan_model import VQGAN, VQGANConfig
from unicl.tokenizers.vqgan_train import VQGANTrainConfig, mask_iou, psnr, train_vqgan

TINY_MODEL = {"resolution": 16, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
              "z_channels": 8, "n_embed": 32, "embed_dim": 4}  # fmt: skip


def test_ema_moves_codes_to_their_latents_and_restarts_dead_ones():
    torch.manual_seed(0)
    model = VQGAN(VQGANConfig(**TINY_MODEL))
    ema = CodebookEMA(model, decay=0.5)
    assert not model.quantize.embedding.weight.requires_grad
    z = torch.randn(2, 4, 8, 8)
    ema.update(z, torch.zeros(2, 8, 8, dtype=torch.long))  # first call: data-dependent start
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    weight = model.quantize.embedding.weight
    # every code now equals one of the latents
    assert (weight[:, None] - flat[None]).norm(dim=-1).min(dim=1).values.max() < 1e-6
    # all latents assigned to code 3: it moves towards their mean, others decay in usage
    for _ in range(30):
        ema.update(z, torch.full((2, 8, 8), 3, dtype=torch.long))
    assert torch.allclose(weight[3], flat.mean(0), atol=1e-3)
    assert ema.count[3] > 100 and ema.count[0] < 1e-3
    before = weight.clone()
    restarted = ema.restart_dead(z, threshold=0.5)
    assert restarted == 31
    assert torch.equal(weight[3], before[3]) and not torch.equal(weight[0], before[0])
    assert (ema.count >= 0.5).all()


def test_metrics():
    codes = torch.arange(8).repeat(4)
    assert perplexity(codes, 16) == pytest.approx(8.0)
    a = np.zeros((2, 4, 4), bool)
    b = a.copy()
    a[0, :2] = True
    b[0, :1] = True
    assert mask_iou(a, b).tolist() == [0.5, 1.0]
    x = np.full((1, 4, 4, 3), 100, np.uint8)
    assert psnr(x, x + 1)[0] == pytest.approx(48.13, abs=0.01)


def test_config_is_typed():
    cfg = from_dict(VQGANTrainConfig, {"model": TINY_MODEL, "steps": 3})
    assert cfg.model.grid == 8 and cfg.steps == 3
    with pytest.raises(ConfigError, match="stepz"):
        from_dict(VQGANTrainConfig, {"stepz": 3})


def test_tiny_training_run_resumes_and_exports(tmp_path):
    from unicl.tasks.world import WorldSpec, make_world

    world = make_world(tmp_path / "world", WorldSpec(images=6, val_images=3, size=64),
                       workers=1, progress=False)  # fmt: skip
    data = {"root": str(world), "images": 6, "val_images": 3, "size": 64}
    base = {"out": str(tmp_path / "run"), "model": TINY_MODEL, "data": data, "batch_size": 4,
            "max_records": 6, "val_records": 3, "log_every": 2, "checkpoint_every": 2,
            "restart_every": 2, "warmup": 1}  # fmt: skip
    first = train_vqgan(from_dict(VQGANTrainConfig, {**base, "steps": 2, "device": "cpu"}))
    assert first["steps"] == 2 and first["device"] == "cpu"
    second = train_vqgan(from_dict(VQGANTrainConfig, {**base, "steps": 4}))
    assert second["steps"] == 4
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").open()]
    assert [r["step"] for r in rows] == [2, 4]  # resumed at step 2, one log
    for key in ("loss", "perplexity", "dead_codes", "psnr_images", "mask_iou"):
        assert key in rows[-1]
    assert 0.0 <= second["mask_iou_mean"] <= 1.0 and second["n"] >= 3
    tok_dir = tmp_path / "tok"
    (tok_dir).mkdir()
    (tok_dir / "tokenizer.json").write_text(json.dumps(
        {"name": "vqgan", "options": {"checkpoint": str(tmp_path / "run" / "export")}}
    ))  # fmt: skip
    assert load_tokenizer(tok_dir).codes_per_image == 64
    # a spent wall-clock budget stops a resumed run before it takes another step
    third = train_vqgan(from_dict(VQGANTrainConfig, {**base, "steps": 50, "max_minutes": 1e-9}))
    assert third["steps"] == 4


def test_device_must_exist():
    from unicl.tokenizers.vqgan_train import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
