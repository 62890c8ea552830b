"""Runs the Python example of README.md ("## Python API") on a tiny random model.

The example's model directory and image files are made here: an export of a
randomly initialised tiny decoder at runs/shapes-tiny and random images, so the
check is that the documented calls run and return what the README says (types
and shapes), not that the answers are good.
"""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(autouse=True, scope="module")
def one_cpu_thread():
    """Generation is many tiny matmuls: one thread is much faster on a busy CPU (restored after)."""
    from unicl.inference import cpu_threads

    with cpu_threads(1):
        yield


def python_example() -> str:
    text = README.read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "README's Python API section has no python block"
    return blocks[0]


def make_tiny_export(out: Path) -> Path:
    from unicl.config import load_config
    from unicl.inference import save_model
    from unicl.model import build_model
    from unicl.sequence import num_attributes
    from unicl.vocab import Vocabulary

    cfg = load_config(
        "shapes_tiny", ["model.n_layer=1", "model.n_head=2", "model.d_model=32", "model.d_ff=64"]
    )
    vqgan = {"resolution": 32, "ch": 32, "ch_mult": [1, 1, 1], "num_res_blocks": 0}
    vqgan.update({"z_channels": 32, "n_embed": 64, "embed_dim": 16})
    cfg.tokenizers[1] = {"name": "vqgan", "checkpoint": None, "config": vqgan}
    for options in cfg.tasks.values():
        options["image_size"] = 32
    torch.manual_seed(0)
    vocab = Vocabulary.from_config(cfg)
    model = build_model(cfg.model, vocab.embedding_size, num_attributes(vocab, sorted(cfg.tasks)))
    return save_model(cfg, model, vocab, out)


def test_readme_python_example(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make_tiny_export(tmp_path / "runs" / "shapes-tiny")
    rng = np.random.default_rng(0)
    for name, (h, w) in {"demo1": (90, 100), "demo2": (72, 64), "query": (96, 88)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(f"{name}.png")
        if name != "query":
            mask = np.zeros((h, w), np.uint8)
            mask[h // 4 : h // 2, w // 4 : 3 * w // 4] = 255
            Image.fromarray(mask).save(f"{name}_mask.png")
    scope: dict = {}
    exec(compile(python_example(), str(README), "exec"), scope)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "(96, 88) bool"
    assert scope["mask"].shape == (96, 88) and scope["mask"].dtype == np.bool_
    assert [m.shape for m in scope["masks"]] == [(96, 88), (90, 100)]
    details = scope["details"]
    assert details.mask_image.shape == (96, 88) and len(details.tokens) == 1
    assert isinstance(scope["text"], str)


@pytest.mark.parametrize("command", ["segment", "caption"])
def test_readme_shell_commands_parse(command):
    """The README's shell lines name options that the commands accept."""
    import argparse
    import importlib

    from unicl.cli import COMMANDS

    text = README.read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    line = re.search(rf"unicl {command} (.*?)\n(?!\s)", text + "\n", flags=re.S).group(1)
    import shlex

    parser = argparse.ArgumentParser()
    importlib.import_module(f"unicl.commands.{COMMANDS[command][0]}").configure(parser)
    args = parser.parse_args(shlex.split(line.replace("\\\n", " ")))
    assert args.category == "heart"
