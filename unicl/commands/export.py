"""`unicl export RUN OUT`: write a run's checkpoint as a model directory `unicl.load` reads.

Logic: unicl/training/export.py.
"""

from __future__ import annotations

import argparse

from unicl.commands import add_allow_plugins, output_dir


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a training run directory (runs/<name>)")
    parser.add_argument(
        "out",
        type=output_dir,
        help="the directory to write (an earlier export there is replaced; any other existing "
        "folder is refused)",
    )
    parser.add_argument("--tag", default=None, help="checkpoint tag (default: the latest)")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="dtype of the stored weights (bfloat16 halves the file; default float32)",
    )
    add_allow_plugins(parser)


def main(args: argparse.Namespace) -> int:
    import torch

    from unicl.training.export import export

    dtype = getattr(torch, args.dtype)
    out = export(args.run, args.out, tag=args.tag, dtype=dtype, allow_plugins=args.allow_plugins)
    print(f"exported {args.run} -> {out}")
    return 0
