"""Runs the Python example of README.md ("## Python API") against the shipped model.

The example's image files are made here (random images), so the check is that the
documented calls run on the model `pip install` brings (`builtin:shapes_tiny`) and
return what the README says (types and shapes), not that the answers are good.
"""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def python_example() -> str:
    text = README.read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "README's Python API section has no python block"
    return blocks[0]


def test_readme_python_example(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # from any working directory
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
