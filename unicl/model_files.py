"""The exported-model format, and reading a model from an export or a training run.

An exported model folder (`unicl export`, docs/training.md "Exporting") holds

    config.yaml          the run's config as trained
    model.safetensors    consolidated fp32 (or bf16) weights, every state-dict key
    tokenizers/<name>/   each tokenizer's `Tokenizer.save` files (VQ-GAN weights, ...)
    .unicl               the marker that says unicl wrote it (unicl/ownership.py)

`read_model` reads either an export or a training run directory (its latest checkpoint,
consolidated in memory) into `ModelFiles`. Reading never writes, and never runs code from a
file: weights come from safetensors or from `torch.load(weights_only=True)`, which refuses
anything but tensors and plain containers; a weight that is NaN or infinite is refused too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

from unicl.config import to_dict
from unicl.ownership import claim, replace_dir, require_own, temporary_sibling
from unicl.safe_load import check_finite, safe_torch_load
from unicl.training.checkpoint import CheckpointManager

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizers"
EXPORT_FILES = (CONFIG_FILE, WEIGHTS_FILE)
#: the DeepSpeed file that holds a checkpoint's module weights
MODEL_STATES = "mp_rank_00_model_states.pt"


@dataclasses.dataclass
class ModelFiles:
    """What a model is built from, read from an export or a run."""

    source: Path  # the folder it was read from
    config: dict[str, Any]  # the run's config as trained (plain YAML data)
    state: dict[str, torch.Tensor]  # state dict, every key
    #: tokenizer name -> its saved folder (exports); None: build from `config` (runs)
    tokenizer_dirs: dict[str, Path] | None
    #: which model these are: the run and checkpoint tag, or the export's weights file and
    #: its size and modification time, and a digest of the config (an edited read-out
    #: option answers differently); evaluation results are reused only for the same
    identity: str = ""


# --------------------------------------------------------------------------- #
# checks
# --------------------------------------------------------------------------- #


def check_model_dir(path: Path) -> dict[str, Any]:
    """Every file an exported model needs is there, or FileNotFoundError naming it; returns
    the model's config (read once here)."""
    for name in EXPORT_FILES:
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"{path / name} is missing: an exported model directory holds "
                f"{', '.join(EXPORT_FILES)} and {TOKENIZER_DIR}/<name>/ (see `unicl export`)"
            )
    config = _read_yaml(path / CONFIG_FILE)
    for spec in config.get("tokenizers") or []:
        name = str(spec.get("name")) if isinstance(spec, dict) else str(spec)
        tok_file = path / TOKENIZER_DIR / name / "tokenizer.json"
        if not tok_file.is_file():
            raise FileNotFoundError(
                f"{tok_file} is missing: the model's config names tokenizer "
                f"{name!r}, whose files belong in {tok_file.parent}"
            )
    return config


def is_run_dir(path: Path) -> bool:
    """Does `path` look like a training run directory (rather than an export)?"""
    return (path / "checkpoints").is_dir() or (path / "run.json").is_file()


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: expected a mapping of config sections, got {type(data).__name__}"
        )
    return data


# --------------------------------------------------------------------------- #
# reading
# --------------------------------------------------------------------------- #


def read_export(path: Path) -> ModelFiles:
    """An exported model folder (checked by `check_model_dir`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = check_model_dir(path)
    try:
        state = load_file(str(path / WEIGHTS_FILE))
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"{path / WEIGHTS_FILE}: not a readable safetensors file ({err}); export the model "
            "again (`unicl export`) or reinstall the package it came with"
        ) from err
    check_finite(state, path / WEIGHTS_FILE)
    names = [str(s["name"]) for s in config.get("tokenizers") or []]
    st = (path / WEIGHTS_FILE).stat()
    identity = f"{(path / WEIGHTS_FILE).resolve()}:{st.st_size}:{st.st_mtime_ns}"
    identity += f":{config_digest(config)}"
    tokenizer_dirs = {n: path / TOKENIZER_DIR / n for n in names}
    return ModelFiles(path, config, state, tokenizer_dirs, identity)


def checkpoint_dir(run_dir: Path, tag: str | None = None) -> Path:
    """The folder of checkpoint `tag` (default: the latest) of a run."""
    manager = CheckpointManager(run_dir / "checkpoints")
    latest = manager.latest() if manager.directory.is_dir() else None
    if latest is None:
        raise FileNotFoundError(
            f"{run_dir}: no training checkpoint found (expected {manager.directory}/latest); "
            "is this a run directory written by `unicl train`?"
        )
    tag_dir = manager.directory / (tag or latest)
    if not (tag_dir / "config.yaml").is_file():
        known = ", ".join(manager.tags()) or "none"
        raise FileNotFoundError(f"{tag_dir}: no such checkpoint (checkpoints: {known})")
    return tag_dir


def consolidated_state_dict(tag_dir: Path) -> dict[str, torch.Tensor]:
    """fp32 weights of the model in a DeepSpeed checkpoint directory.

    fp32 runs (ZeRO 0, 1 or 2 alike) keep full weights in the model-state file; bf16 runs
    keep their fp32 master weights in the ZeRO optimiser partitions, which DeepSpeed's
    `zero_to_fp32` gathers once every file has passed the safe load.
    """
    model_file = tag_dir / MODEL_STATES
    if not model_file.is_file():
        raise FileNotFoundError(f"{model_file} is missing: not a complete DeepSpeed checkpoint")
    module = safe_torch_load(model_file)["module"]
    if all(t.dtype == torch.float32 for t in module.values() if t.is_floating_point()):
        return dict(module)
    optim_files = sorted(tag_dir.glob("*optim_states.pt"))
    if optim_files:
        for path in optim_files:
            safe_torch_load(path)  # refuses before zero_to_fp32's own unrestricted load
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
        # buffers (not optimised) come from the module file
        return {**{k: v.float() for k, v in module.items()}, **state}
    return {k: v.float() if v.is_floating_point() else v for k, v in module.items()}


def read_run(run_dir: Path, tag: str | None = None) -> ModelFiles:
    """A training run's checkpoint `tag` (default: the latest), consolidated in memory."""
    tag_dir = checkpoint_dir(run_dir, tag)
    config = _read_yaml(tag_dir / "config.yaml")
    state = consolidated_state_dict(tag_dir)
    check_finite(state, tag_dir)
    identity = f"{tag_dir.resolve()}:{config_digest(config)}"
    return ModelFiles(run_dir, config, state, None, identity)


def config_digest(config: dict[str, Any]) -> str:
    """A short digest of a model's config (plain YAML data)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


BUILTIN_PREFIX = "builtin:"


def _models_root() -> Path:
    from importlib import resources

    return Path(str(resources.files("unicl.assets") / "models"))


def builtin_models() -> list[str]:
    """Names of the models shipped with unicl (`builtin:<name>`)."""
    root = _models_root()
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def resolve_builtin(name: str) -> Path:
    """The folder of the shipped model `name`, or ValueError listing the shipped ones."""
    path = _models_root() / name
    if not name or not (path / CONFIG_FILE).is_file():
        shipped = ", ".join(f"builtin:{n}" for n in builtin_models()) or "none in this install"
        raise ValueError(f"path: no shipped model {BUILTIN_PREFIX}{name}; shipped: {shipped}")
    return path


def read_model(path: str | Path) -> ModelFiles:
    """An exported model folder, a run directory's latest checkpoint, or `builtin:<name>`."""
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path: expected a folder path (str or Path), got {type(path).__name__}")
    if not str(path).strip():
        raise ValueError("path: empty; give a run directory or an exported model folder")
    if isinstance(path, str) and path.startswith(BUILTIN_PREFIX):
        return read_export(resolve_builtin(path[len(BUILTIN_PREFIX) :]))
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model directory not found: {path}")
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory (expected a run or an exported model)")
    if (path / WEIGHTS_FILE).is_file() or not is_run_dir(path):
        return read_export(path)
    return read_run(path)


# --------------------------------------------------------------------------- #
# writing
# --------------------------------------------------------------------------- #


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors file with every key; tensors that share storage are stored as copies."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()}
    save_file(tensors, str(path), metadata={"format": "pt", "producer": "unicl export"})


def write_export(
    files: ModelFiles,
    tokenizers: dict[str, Any],
    out_dir: str | Path,
    dtype: torch.dtype | None = None,
    extra_files: dict[str, Path] | None = None,
) -> Path:
    """Write an exported model folder; replaces `out_dir` only if it is an earlier export.

    Written beside the target and swapped in at the end: an interrupted export leaves the
    previous export (or nothing) in place, never a half folder. `dtype` converts floating
    weights (e.g. torch.bfloat16 for a smaller file); `extra_files` (name -> source) are
    copied in beside the weights (the run's training log).
    """
    out_dir = Path(os.path.abspath(out_dir))  # "." and ".." have no name to replace
    require_own(out_dir, "export", "export destination")
    tmp = temporary_sibling(out_dir)
    try:
        claim(tmp, "export", "export destination")
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(files.config, sort_keys=False))
        state = files.state
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        save_weights(state, tmp / WEIGHTS_FILE)
        for name, tokenizer in tokenizers.items():
            tokenizer.save(tmp / TOKENIZER_DIR / name)
        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, tmp / name)
        return replace_dir(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_model(cfg: Any, model: torch.nn.Module, vocab: Any, out_dir: str | Path) -> Path:
    """Write an in-memory model as an exported directory that `unicl.load` reads.

    The same format as `unicl export` (unicl/model_files.py), for models that never went
    through a training run: a model trained in a notebook, or a randomly initialised one
    for speed tests.
    """
    files = ModelFiles(Path(out_dir), to_dict(cfg), model.state_dict(), None)
    return write_export(files, dict(vocab.tokenizers), out_dir)
