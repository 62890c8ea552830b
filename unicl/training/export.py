"""`unicl export RUN OUT`: a training checkpoint -> the directory `unicl.load` reads.

An exported model directory (DESIGN.md "Checkpoints") holds

    config.yaml          the run's config as trained
    model.safetensors    consolidated fp32 weights (every state-dict key, tied ones too)
    tokenizers/<name>/   each tokenizer's `Tokenizer.save` files (VQ-GAN weights, ...)

Weights come from the DeepSpeed checkpoint: the model-state file holds full fp32
weights for fp32 runs (ZeRO 0, 1 or 2 alike); bf16 runs keep their fp32 master
weights in the ZeRO optimiser partitions, which DeepSpeed's `zero_to_fp32`
gathers. Loading an export never unpickles anything: safetensors and JSON/YAML
only. (The DeepSpeed checkpoint itself is read with pickle: it is the run's own
file, written by `unicl train`.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import yaml

from unicl.training.checkpoint import CONFIG, CheckpointManager

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizers"
#: where `latest_export` keeps exports inside a run directory
EXPORTS_DIR = "export"


def _checkpoints(run_dir: Path) -> CheckpointManager:
    manager = CheckpointManager(run_dir / "checkpoints")
    if not manager.directory.is_dir() or manager.latest() is None:
        raise FileNotFoundError(
            f"{run_dir}: no training checkpoint found (expected {manager.directory}/latest); "
            "is this a run directory written by `unicl train`?"
        )
    return manager


def consolidated_state_dict(tag_dir: Path) -> dict[str, torch.Tensor]:
    """fp32 weights of the model in a DeepSpeed checkpoint directory."""
    model_file = tag_dir / "mp_rank_00_model_states.pt"
    if not model_file.is_file():
        raise FileNotFoundError(f"{model_file} is missing: not a complete DeepSpeed checkpoint")
    # our own checkpoint written by DeepSpeed (pickled metadata alongside the tensors)
    states = torch.load(model_file, map_location="cpu", weights_only=False)
    module = states["module"]
    if all(t.dtype == torch.float32 for t in module.values() if t.is_floating_point()):
        return dict(module)
    if any(tag_dir.glob("*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
        # buffers (not optimised) come from the module file
        return {**{k: v.float() for k, v in module.items()}, **state}
    return {k: v.float() if v.is_floating_point() else v for k, v in module.items()}


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors file with every key; tensors that share storage are stored as copies."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()}
    save_file(tensors, str(path), metadata={"format": "pt", "producer": "unicl export"})


def export(run_dir: str | Path, out_dir: str | Path, tag: str | None = None) -> Path:
    """Write the run's checkpoint `tag` (default: latest) as an exported model into `out_dir`."""
    from unicl.config import from_dict
    from unicl.plugins import import_plugins
    from unicl.tokenizers.base import build_tokenizer

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    manager = _checkpoints(run_dir)
    tag = tag or manager.latest()
    tag_dir = manager.directory / tag
    if not (tag_dir / CONFIG).is_file():
        known = ", ".join(manager.tags()) or "none"
        raise FileNotFoundError(f"{tag_dir}: no such checkpoint (checkpoints: {known})")
    config = yaml.safe_load((tag_dir / CONFIG).read_text())
    from unicl.config import UniclConfig

    cfg = from_dict(UniclConfig, config)
    import_plugins(cfg.plugins)
    # write beside the target and move into place: a failed export leaves no half directory
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
        save_weights(consolidated_state_dict(tag_dir), tmp / WEIGHTS_FILE)
        for spec in cfg.tokenizers:
            build_tokenizer(spec).save(tmp / TOKENIZER_DIR / spec["name"])
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def latest_export(run_dir: str | Path) -> Path:
    """An export of the run's latest checkpoint, made on first use under <run>/export/<tag>."""
    run_dir = Path(run_dir)
    tag = _checkpoints(run_dir).latest()
    out = run_dir / EXPORTS_DIR / tag
    if not (out / WEIGHTS_FILE).is_file() or not (out / CONFIG_FILE).is_file():
        export(run_dir, out, tag)
    return out
