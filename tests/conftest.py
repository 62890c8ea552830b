"""Shared pytest setup: the `gpu` marker skips tests when no CUDA device is present."""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_cpu_thread():
    """Generation is many tiny matmuls: one thread is much faster on a busy CPU (restored after)."""
    from unicl.devices import cpu_threads

    with cpu_threads(1):
        yield


@pytest.fixture(scope="session")
def make_tiny_export():
    """Factory: export a randomly initialised tiny model (1 layer, width 32, fresh small VQ-GAN).

    `make_tiny_export(out, image_size=16, overrides=())` writes what `unicl.load` reads to `out`;
    `overrides` are extra `key=value` config overrides (e.g. a small world for evaluation). At
    16 px (16 codes per image) captions cannot be padded to the image-pair length, so padding is
    turned off there.
    """

    def make(out, image_size: int = 16, overrides=()):
        from unicl.config import load_config
        from unicl.model import build_decoder
        from unicl.model_files import save_model
        from unicl.vocab import Vocabulary

        model_overrides = ["model.n_layer=1", "model.n_head=2", "model.d_model=32", "model.d_ff=64"]
        cfg = load_config("shapes_tiny", [*model_overrides, *overrides])
        vqgan = {"resolution": image_size, "ch": 32, "ch_mult": [1, 1, 1], "num_res_blocks": 0}
        vqgan.update({"z_channels": 32, "n_embed": 64, "embed_dim": 16})
        cfg.tokenizers[1] = {"name": "vqgan", "checkpoint": None, "config": vqgan}
        for spec in cfg.tokenizers:
            if spec["name"] == "maskbits":  # the mask code's grid follows the 4x-down VQ-GAN's
                spec.update(grid=image_size // 4, cells=2, size=image_size)
        for options in cfg.tasks.values():
            options["image_size"] = image_size
        if image_size < 32:
            cfg.tasks["captioning"]["pad_to_image_length"] = False
        torch.manual_seed(0)
        vocab = Vocabulary.from_config(cfg)
        model = build_decoder(cfg.model, vocab, cfg.tasks)
        return save_model(cfg, model, vocab, out)

    return make
