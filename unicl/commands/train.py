"""`unicl train CONFIG [key=value ...]`: train a model (logic: unicl/training/run.py).

Runs as one process, or as N ranks under `deepspeed --num_gpus N` / `torchrun`;
see docs/training.md. A run whose loss diverges stops with exit status 3
(unicl/cli.py reports it).
"""

from __future__ import annotations

import argparse

from unicl.commands import add_overrides


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a YAML config path or a packaged config name")
    add_overrides(parser, "train.steps=200 train.lr=3e-4")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    from unicl.config import load_config
    from unicl.training.run import run_dir_of, train

    cfg = load_config(args.config, args.overrides)
    trainer = train(cfg, progress=not args.no_progress)
    if trainer.rank == 0:
        print(f"trained {cfg.train.steps} steps; run directory: {run_dir_of(cfg)}")
    return 0
