"""`unicl export RUN OUT`: write a run's checkpoint as a model directory `unicl.load` reads.

Logic: unicl/training/export.py.
"""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a training run directory (runs/<name>)")
    parser.add_argument("out", help="the directory to write (replaced if it exists)")
    parser.add_argument("--tag", default=None, help="checkpoint tag (default: the latest)")


def main(args: argparse.Namespace) -> int:
    from unicl.training.export import export

    try:
        out = export(args.run, args.out, tag=args.tag)
    except (FileNotFoundError, ValueError) as err:
        print(f"unicl export: error: {err}", file=sys.stderr)
        return 2
    print(f"exported {args.run} -> {out}")
    return 0
