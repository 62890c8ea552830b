"""Shared pieces of the bad-input tests over files: a run directory made from an export, a
malicious pickle, snapshots of folders, a user's folder with work in it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from unicl.model_files import MODEL_STATES, WEIGHTS_FILE


def fake_run(export_dir: Path, run_dir: Path, module: dict | None = None) -> Path:
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


class Payload:
    """Unpickling this runs `open(path, "w")`: evidence of code execution."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def user_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "thesis.tex").write_text("years of work")
    return path


def intact(path: Path) -> bool:
    return (path / "thesis.tex").read_text() == "years of work"


def export_with_plugins(export_dir: Path, out: Path, plugins: list[str]) -> Path:
    import shutil

    shutil.copytree(export_dir, out)
    config = yaml.safe_load((out / "config.yaml").read_text())
    config["plugins"] = plugins
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    return out


def broken_export(export_dir: Path, out: Path, name: str, content: bytes) -> Path:
    import shutil

    shutil.copytree(export_dir, out)
    (out / name).write_bytes(content)
    return out
