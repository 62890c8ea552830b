"""`unicl demo`: world -> training (or reuse) -> evaluation -> a results folder (unicl/demo.py).

With no arguments it uses the tiny default (configs/shapes_tiny.yaml), the run
directory runs/shapes-tiny and writes results/shapes-tiny/. Re-running reuses the
world, the token cache, a finished run and its evaluation.
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default="shapes_tiny", help="config file or packaged name (default shapes_tiny)"
    )
    parser.add_argument(
        "--run", default=None, metavar="DIR", help="run directory (default runs/<name>)"
    )
    parser.add_argument(
        "--out", default=None, metavar="DIR", help="results (default results/<name>)"
    )
    parser.add_argument(
        "--retrain", action="store_true", help="delete the run directory's training and train again"
    )
    parser.add_argument(
        "--queries-per-category",
        type=int,
        default=3,
        help="evaluation queries per category (default 3)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def main(args: argparse.Namespace) -> int:
    from unicl.commands.caption import report_errors
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
    return report_errors("demo", lambda: (run_demo(opts), 0)[1])
