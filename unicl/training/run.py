"""`unicl train`: build a run's data, vocabulary and model from its config, then train.

Order matters for the user: everything that can be checked cheaply is checked
before anything expensive starts (making the shapes world, tokenizing images into
the token cache, building the model):

    1. preflight   process group; batch vs ranks; the DeepSpeed section; dataset
                   paths exist; a resume's checkpoint matches the config, or else the
                   weights `train.init_from` names do
    2. data        the shapes world (rank 0 makes it if missing), tokenizers and
                   vocabulary, per-task streams (rank 0 fills the token cache first)
    3. fit check   one sequence per task must fit `model.max_positions`
    4. model       seeded (or `train.init_from`'s weights), then the Trainer
                   (unicl/training/trainer.py)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from unicl.batch import collate
from unicl.config import UniclConfig, from_dict, to_dict
from unicl.loss import compute_loss
from unicl.model import build_decoder
from unicl.model_files import ModelFiles, read_model
from unicl.ownership import require_own
from unicl.plugins import import_plugins
from unicl.streams import build_task_streams, build_tasks
from unicl.tasks.sources import ensure_world, uses_shapes_world
from unicl.training import engine as ds_engine
from unicl.training.checkpoint import CheckpointManager, check_compatible
from unicl.training.trainer import Trainer
from unicl.vocab import Vocabulary

#: data fields that name files or directories (checked before any work)
_PATH_FIELDS = (
    "coco_train_ann",
    "coco_val_ann",
    "coco_train_images",
    "coco_val_images",
    "vg_train_regions",
    "vg_val_regions",
    "vg_objects",
    "vg_image_data",
)


def run_dir_of(cfg) -> Path:
    """The run directory: train.run_dir, else runs/<config name>."""
    return Path(cfg.train.run_dir or Path("runs") / cfg.name)


def check_data_paths(data) -> None:
    """FileNotFoundError naming every configured dataset path that does not exist."""
    missing = []
    for field in _PATH_FIELDS:
        value = getattr(data, field, "")
        if value and not Path(value).expanduser().exists():
            missing.append(f"data.{field} = {value}")
    for part in filter(None, (getattr(data, "vg_images", "") or "").split(",")):
        if not Path(part.strip()).expanduser().is_dir():
            missing.append(f"data.vg_images = {part.strip()}")
    if missing:
        raise FileNotFoundError(
            "dataset paths not found:\n  "
            + "\n  ".join(missing)
            + "\nsee docs/training.md (Preparing COCO 2017 and Visual Genome)"
        )


#: model options that say how the weights are trained or run, or what the copy head adds
#: (every weight keeps its shape): a fine-tune (`train.init_from`) may change them
_FINE_TUNE_MODEL_KEYS = (
    "dropout",
    "moe_backend",
    "router_noise",
    "capacity_factor",
    "copy_values",
)


def completed(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the defaults of the keys it lacks (written before they existed)."""
    return to_dict(from_dict(UniclConfig, saved))


def initial_weights(source: str, config_dict: dict[str, Any]) -> ModelFiles:
    """The weights `train.init_from` names, checked against this run's model, vocabulary and
    tokenizers (tasks, data and schedule may differ)."""
    files = read_model(source)
    model_keys = [f"model.{k}" for k in config_dict["model"] if k not in _FINE_TUNE_MODEL_KEYS]
    check_compatible(
        completed(files.config),
        config_dict,
        keys=["vocab", "tokenizers", *model_keys],
        needs="train.init_from needs the same model, vocabulary and tokenizers",
        hint=f"train.init_from = {source}: start from a model of this config's shape",
    )
    return files


def preflight(cfg, config_dict: dict[str, Any]) -> tuple[int, int, ModelFiles | None]:
    """The cheap checks (module docstring, step 1); returns (rank, world_size, the weights
    to start from: `train.init_from`'s unless the run resumes, else None)."""
    rank, world = ds_engine.init_distributed()
    ds_engine.deepspeed_config(cfg.deepspeed, cfg.train, world)  # raises on any conflict
    check_data_paths(cfg.data)
    require_own(run_dir_of(cfg), "run", "train.run_dir")
    manager = CheckpointManager(run_dir_of(cfg) / "checkpoints")
    tag = manager.latest()
    if tag is not None and cfg.train.resume != "never":
        check_compatible(completed(manager.saved_config(tag)), config_dict)
    start = None
    if tag is None and cfg.train.init_from:
        start = initial_weights(cfg.train.init_from, config_dict)
    return rank, world, start


def build_streams(cfg, vocab, rank: int, progress: bool):
    """Per-task training streams; rank 0 builds the token caches, the others then read them."""
    streams = None
    if rank == 0:
        streams = build_task_streams(cfg, vocab, "train", progress=progress)
    ds_engine.barrier()
    if rank != 0:
        streams = build_task_streams(cfg, vocab, "train", progress=False)
    return streams


def check_fits(streams, max_positions: int) -> None:
    """ValueError if a task's sequences are longer than the model's positions."""
    for name, stream in sorted(streams.items()):
        example = stream.examples(0, 1)[0]
        # aligned grid spans share positions, so a sequence may hold more tokens than positions
        length = int(example.positions.max()) + 1
        if length > max_positions:
            raise ValueError(
                f"task {name!r}: sequences need {length} positions but model.max_positions is "
                f"{max_positions}; raise model.max_positions or use fewer demonstrations / "
                "smaller images"
            )


class _Loss:
    """compute_loss, with per-layer expert loads as token shares for the logs."""

    def __init__(self, closed_spans=()):
        self.closed_spans = tuple(closed_spans)  # global id ranges (train.closed_loss_spans)

    def __call__(self, model, batch):
        out = compute_loss(model, batch, self.closed_spans)
        load = None
        if out.expert_load:
            counts = torch.stack([x.detach().float() for x in out.expert_load])  # (L, E)
            load = counts / counts.sum(dim=1, keepdim=True).clamp_min(1.0)
        return _StepLoss(loss=out.loss, ce=out.ce, aux=out.aux.detach(), expert_load=load)


class _StepLoss:
    __slots__ = ("aux", "ce", "expert_load", "loss")

    def __init__(self, loss, ce, aux, expert_load):
        self.loss, self.ce, self.aux, self.expert_load = loss, ce, aux, expert_load


def target_token_count(batch) -> torch.Tensor:
    """compute_loss's denominator: loss weights of positions 1.. (position t predicts t)."""
    return batch.loss_weights[:, 1:].detach().float().sum()


def retain_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory in the process; False where there is no glibc.

    By default glibc maps every block over 32 MiB fresh and unmaps it on free, so a training
    step's large activations are new pages every step, and first touches fault at a cost
    comparable to a matmul pass over the tensor. This is what `MALLOC_MMAP_MAX_=0
    MALLOC_TRIM_THRESHOLD_=<large>` does, applied from inside the process (it affects later
    allocations). The process then keeps its peak memory until it exits.
    """
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's mallopt parameter numbers
    if not (libc.mallopt(m_mmap_max, 0) and libc.mallopt(m_trim_threshold, 2**31 - 1)):
        raise RuntimeError("glibc mallopt refused M_MMAP_MAX / M_TRIM_THRESHOLD")
    return True


def build_trainer(cfg, progress: bool = True):
    """Steps 1-4 of the module docstring for `cfg` (a UniclConfig): a Trainer ready to run."""
    if not torch.cuda.is_available():
        # float32 denormals make CPU matmuls ~100x slower once gradients get small
        torch.set_flush_denormal(True)
        if cfg.train.cpu_malloc == "retain":
            retain_freed_memory()
    config_dict = to_dict(cfg)
    rank, _, start = preflight(cfg, config_dict)
    import_plugins(cfg.plugins)
    build_tasks(cfg)  # unknown task names or options fail here, before the world is made
    if uses_shapes_world(cfg.data):
        if rank == 0:
            ensure_world(cfg.data, progress=progress)
        ds_engine.barrier()
    vocab = Vocabulary.from_config(cfg)
    streams = build_streams(cfg, vocab, rank, progress)
    check_fits(streams, cfg.model.max_positions)
    unknown = sorted(set(cfg.train.closed_loss_spans) - set(vocab.tokenizers))
    if unknown:
        raise ValueError(
            f"train.closed_loss_spans names {unknown}, which are not configured tokenizers; "
            f"valid: {', '.join(vocab.tokenizers)}"
        )
    torch.manual_seed(cfg.seed)
    model = build_decoder(cfg.model, vocab, streams)
    if start is not None:
        missing, unexpected = model.load_state_dict(start.state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"train.init_from = {cfg.train.init_from}: its weights do not fit this "
                f"model: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
            )
        if progress and rank == 0:
            print(f"starting from the weights of {start.source}")
    return Trainer(
        model,
        streams,
        collate,
        _Loss(vocab.ranges[name] for name in cfg.train.closed_loss_spans),
        cfg.train,
        cfg.deepspeed,
        run_dir_of(cfg),
        seed=cfg.seed,
        config=config_dict,
        progress=progress,
        token_count=target_token_count,
        complete=completed,
    )


def train(cfg, progress: bool = True):
    """Train the run `cfg` (a UniclConfig) describes; returns the Trainer after it finished."""
    trainer = build_trainer(cfg, progress)
    trainer.run()
    return trainer
