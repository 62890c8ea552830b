"""The DeepSpeed engine: process environment, DeepSpeed config, `deepspeed.initialize`.

unicl runs the same way under a launcher (`deepspeed --num_gpus N`, `torchrun`,
which set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT) and as a
plain single process: `setup_environment` fills in a one-rank world on a free
local port when no launcher did. Without CUDA, DeepSpeed's CPU accelerator is
selected (`DS_ACCELERATOR=cpu`, which must be set before deepspeed is imported)
and ranks talk over gloo.

The config's `deepspeed:` dict is handed to DeepSpeed after unicl fills in what it
owns: batch sizes and gradient accumulation (from `train.batch_size`,
`train.micro_batch` and the number of ranks), gradient clipping
(`train.grad_clip`) and precision (`train.precision`: bf16 on CUDA, fp32 on CPU).
The optimiser and schedule are unicl's own (unicl/training/optim.py), passed as
client objects, so no C++ optimiser op is compiled.
"""

from __future__ import annotations

import copy
import os
import socket
from pathlib import Path
from typing import Any

import torch

from unicl.safe_load import safe_torch_load
from unicl.training.config import TrainConfig
from unicl.training.optim import WarmupCosine, build_optimizer

_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: ZeRO stages whose weights stay whole on every rank (ZeRO-3 shards them: not supported)
SUPPORTED_ZERO_STAGES = (0, 1, 2)


def free_port() -> int:
    """A TCP port on localhost that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def setup_environment() -> None:
    """Make the process a rank DeepSpeed can initialise, launcher or not."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    present = [name for name in _LAUNCHER_VARS if name in os.environ]
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in os.environ:
            raise RuntimeError("RANK and WORLD_SIZE are set but MASTER_PORT is not")
        return
    if present:
        raise RuntimeError(
            f"incomplete launcher environment: {', '.join(present)} set but not RANK and "
            "WORLD_SIZE; start with `deepspeed`/`torchrun` or unset them"
        )
    os.environ.update(
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
    )


def init_distributed() -> tuple[int, int]:
    """Set up the process group (gloo on CPU, nccl on CUDA); returns (rank, world_size)."""
    setup_environment()
    import deepspeed
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), dist.get_world_size()


def barrier() -> None:
    """Wait until every rank gets here (nothing to wait for without a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def use_bf16(train: TrainConfig) -> bool:
    if train.precision == "auto":
        return torch.cuda.is_available()
    return train.precision == "bf16"


def deepspeed_config(user: dict[str, Any], train: TrainConfig, world_size: int) -> dict[str, Any]:
    """The dict for `deepspeed.initialize`: the user's section plus what unicl owns.

    Keys unicl fills in may also be written in the user's section, but only with
    the same value; anything else is a ValueError naming both sides.
    """
    cfg = copy.deepcopy(dict(user))
    for key in ("optimizer", "scheduler"):
        if key in cfg:
            raise ValueError(
                f"deepspeed.{key}: unicl builds the optimiser and schedule itself; set them "
                f"under `train:` (optimizer, lr, warmup_steps, ...) and remove deepspeed.{key}"
            )
    if cfg.get("fp16", {}).get("enabled"):
        raise ValueError("deepspeed.fp16: not supported; use train.precision=bf16 (or fp32)")
    stage = int(cfg.get("zero_optimization", {}).get("stage", 0))
    if stage not in SUPPORTED_ZERO_STAGES:
        raise ValueError(
            f"deepspeed.zero_optimization.stage={stage} is not supported; use one of "
            f"{list(SUPPORTED_ZERO_STAGES)}"
        )
    owned = {
        "train_batch_size": train.batch_size,
        "train_micro_batch_size_per_gpu": train.micro_batch,
        "gradient_accumulation_steps": train.accumulation_steps(world_size),
        "gradient_clipping": train.grad_clip,
    }
    for key, value in owned.items():
        if key in cfg and cfg[key] != value:
            raise ValueError(
                f"deepspeed.{key}={cfg[key]!r} disagrees with the train section ({value!r}); "
                f"set it under `train:` only"
            )
        cfg[key] = value
    bf16 = use_bf16(train)
    if "bf16" in cfg and bool(cfg["bf16"].get("enabled", False)) != bf16:
        raise ValueError(
            f"deepspeed.bf16.enabled={cfg['bf16'].get('enabled')} disagrees with "
            f"train.precision={train.precision!r}; set the precision under `train:`"
        )
    cfg["bf16"] = {**cfg.get("bf16", {}), "enabled": bf16}
    if bf16 and stage > 0:
        # keep fp32 gradient accumulation (DeepSpeed's BF16 optimiser) for ZeRO-1/2
        cfg.setdefault("data_types", {}).setdefault("grad_accum_dtype", "fp32")
    # our optimiser is a client torch optimiser DeepSpeed has not vetted for ZeRO
    cfg.setdefault("zero_allow_untested_optimizer", True)
    cfg.setdefault("steps_per_print", 10**9)
    cfg.setdefault("wall_clock_breakdown", False)
    return cfg


def zero_stage(ds_config: dict[str, Any]) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


def build_engine(model: torch.nn.Module, train: TrainConfig, ds_config: dict[str, Any]):
    """Wrap `model` in a DeepSpeed engine with unicl's optimiser and schedule.

    Returns (engine, client optimiser, scheduler). The client optimiser is the
    object to call `set_task` on; under ZeRO it runs inside DeepSpeed's wrapper and
    sees this rank's partition of the gradient, hence `partitioned`.
    """
    import deepspeed
    import torch.distributed as dist

    world_size = dist.get_world_size() if dist.is_initialized() else 1
    partitioned = world_size > 1 and zero_stage(ds_config) >= 1
    optimizer = build_optimizer(model, train, partitioned=partitioned)

    def scheduler(opt):
        return WarmupCosine(
            opt,
            lr=train.lr,
            total=train.steps,
            warmup=train.warmup_steps,
            min_ratio=train.min_lr_ratio,
        )

    engine, _, _, sched = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=ds_config,
        dist_init_required=False,
    )
    engine.checkpoint_engine = _safe_checkpoint_engine(engine.checkpoint_engine)
    return engine, optimizer, sched


def _safe_checkpoint_engine(engine: Any) -> Any:
    """DeepSpeed's checkpoint engine with loading restricted to tensors and plain containers.

    DeepSpeed's own `load` unpickles anything, so a run directory from elsewhere could run
    code on resume; unicl's checkpoints hold only tensors, numbers, strings and containers.
    """

    class SafeLoad(type(engine)):
        def load(self, path, map_location=None):
            return safe_torch_load(Path(path), map_location=map_location)

    engine.__class__ = SafeLoad
    return engine
