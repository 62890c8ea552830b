"""`unicl make-world OUT`: render the synthetic shapes world (tasks/world.py)."""

from __future__ import annotations

import argparse

from unicl.commands import non_negative_int, output_dir, positive_int


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "out", type=output_dir, help="output directory (images/, annotations/, manifest.json)"
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="world seed (default 0)")
    parser.add_argument(
        "--images", type=positive_int, default=4000, help="train images (default 4000)"
    )
    parser.add_argument(
        "--val-images", type=positive_int, default=500, help="val images (default 500)"
    )
    parser.add_argument(
        "--size", type=positive_int, default=128, help="image side in pixels (default 128)"
    )
    parser.add_argument(
        "--unseen",
        default=None,
        help="comma-separated categories held out of train (default: heart,octagon,trapezoid,"
        "teardrop,flower)",
    )
    parser.add_argument(
        "--workers", type=positive_int, default=None, help="processes (default: CPUs, <= 8)"
    )


def main(args: argparse.Namespace) -> int:
    from unicl.tasks.world import WorldSpec, make_world

    kwargs = {}
    if args.unseen is not None:
        kwargs["unseen"] = tuple(n.strip() for n in args.unseen.split(",") if n.strip())
    spec = WorldSpec(
        seed=args.seed, images=args.images, val_images=args.val_images, size=args.size, **kwargs
    )
    out = make_world(args.out, spec, workers=args.workers)
    print(f"shapes world written to {out}")
    return 0
