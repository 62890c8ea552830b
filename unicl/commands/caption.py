"""`unicl caption`: caption a region of a query image from demonstrations.

    unicl caption --demo IMG X0 Y0 X1 Y1 TEXT [--demo ...] \
        --query IMG X0 Y0 X1 Y1 [--category NAME] [--model RUN]

Boxes are in the pixels of their image. The caption is printed
(unicl/api.py `InContextModel.caption`).
"""

from __future__ import annotations

import argparse

from unicl.commands import add_allow_plugins, positive_int, torch_device

DEFAULT_MODEL = "runs/shapes-tiny"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `unicl segment` and `unicl caption`."""
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="RUN",
        help=f"a run directory or an exported model directory (default {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--device", type=torch_device, default=None, help="torch device (default: cuda if present)"
    )
    add_allow_plugins(parser)
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="sampling temperature (default 0 = greedy decoding)",
    )
    parser.add_argument(
        "--top-k", type=positive_int, default=None, help="sample from the k likeliest ids"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed for sampling")
    parser.add_argument(
        "--max-tokens",
        type=positive_int,
        default=None,
        help="cap on the generated caption's tokens",
    )


def sampling_options(args: argparse.Namespace) -> dict:
    return {
        "temperature": args.temperature,
        "top_k": args.top_k,
        "seed": args.seed,
        "max_tokens": args.max_tokens,
    }


def load_model(args: argparse.Namespace):
    import unicl

    return unicl.load(args.model, device=args.device, allow_plugins=args.allow_plugins)


def _box(values: list[str], what: str) -> tuple[float, float, float, float]:
    try:
        return tuple(float(v) for v in values)  # type: ignore[return-value]
    except ValueError:
        raise ValueError(f"{what}: box coordinates must be numbers, got {values}") from None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--demo",
        nargs=6,
        action="append",
        default=[],
        metavar=("IMG", "X0", "Y0", "X1", "Y1", "TEXT"),
        help="a demonstration: an image, a box in its pixels and the box's caption",
    )
    parser.add_argument(
        "--query",
        nargs=5,
        required=True,
        metavar=("IMG", "X0", "Y0", "X1", "Y1"),
        help="the image and the box to caption",
    )
    parser.add_argument("--category", default=None, help="the region's category name, as text")
    add_model_arguments(parser)


def main(args: argparse.Namespace) -> int:
    demos = [(d[0], _box(d[1:5], f"--demo {i + 1}"), d[5]) for i, d in enumerate(args.demo)]
    query, box = args.query[0], _box(args.query[1:], "--query")
    model = load_model(args)
    text = model.caption(query, box, demos, category=args.category, **sampling_options(args))
    print(text)
    return 0
