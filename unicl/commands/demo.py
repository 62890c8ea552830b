"""`unicl demo`: world -> the shipped model, or training (or reuse) -> evaluation -> a results
folder (unicl/demo.py).

With no arguments it uses the tiny default (configs/shapes_tiny.yaml): the shipped trained
model `builtin:shapes_tiny` when this install has one, else the run directory
runs/shapes-tiny; it writes results/shapes-tiny/. `--retrain` trains from scratch (into
results/shapes-tiny-retrained/ when a shipped model exists). Re-running reuses the world,
the token cache, a finished run and its evaluation.
"""

from __future__ import annotations

import argparse

from unicl.commands import add_overrides, output_dir, positive_int


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default="shapes_tiny", help="config file or packaged name (default shapes_tiny)"
    )
    parser.add_argument(
        "--run",
        type=output_dir,
        default=None,
        metavar="DIR",
        help="run directory (default runs/<name>)",
    )
    parser.add_argument(
        "--out",
        type=output_dir,
        default=None,
        metavar="DIR",
        help="results (default results/<name>)",
    )
    parser.add_argument(
        "--retrain",
        action="store_true",
        help="train from scratch (deletes the run directory's training) instead of using the "
        "shipped model or a finished run",
    )
    parser.add_argument(
        "--queries-per-category",
        type=positive_int,
        default=3,
        help="evaluation queries per category (default 3)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_overrides(parser)


def main(args: argparse.Namespace) -> int:
    from unicl.demo import DemoOptions, run_demo

    opts = DemoOptions(
        config=args.config,
        overrides=args.overrides,
        run=args.run,
        out=args.out,
        retrain=args.retrain,
        queries_per_category=args.queries_per_category,
        progress=not args.no_progress,
    )
    run_demo(opts)
    return 0
