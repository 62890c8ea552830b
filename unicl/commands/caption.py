"""`unicl caption`: caption a region of a query image from demonstrations.

    unicl caption --demo IMG X0 Y0 X1 Y1 TEXT [--demo ...] \
        --query IMG X0 Y0 X1 Y1 [--category NAME] [--model RUN]

Boxes are in the pixels of their image. The caption is printed
(unicl/api.py `InContextModel.caption`).
"""

from __future__ import annotations

import argparse

from unicl.commands import add_model_arguments, load_model, sampling_options


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
