"""`unicl demo`: world -> training (or reuse) -> evaluation -> a results folder (unicl/demo.py).

With no arguments it uses the tiny default (configs/shapes_tiny.yaml), the run
directory runs/shapes-tiny and writes results/shapes-tiny/. Re-running reuses the
world, the token cache, a finished run and its evaluation.
"""

from __future__ import annotations

import argparse

from unicl.commands import output_dir, positive_int


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
        "--retrain", action="store_true", help="delete the run directory's training and train again"
    )
    parser.add_argument(
        "--queries-per-category",
        type=positive_int,
        default=3,
        help="evaluation queries per category (default 3)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "overrides", nargs="*", default=[], metavar="key=value", help="config overrides"
    )


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
