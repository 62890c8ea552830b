"""`unicl segment`: segment a query image from (image, mask) demonstrations.

    unicl segment --demo IMG MASK [--demo IMG MASK ...] --query IMG \
        [--category NAME] --out PRED.png [--model RUN]

The predicted mask is written as a 0/255 PNG at the query's own resolution
(unicl/api.py `InContextModel.segment`).
"""

from __future__ import annotations

import argparse

from unicl.commands import add_model_arguments, load_model, output_file, sampling_options


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--demo",
        nargs=2,
        action="append",
        default=[],
        metavar=("IMG", "MASK"),
        help="a demonstration: an image and its mask (repeat for more shots)",
    )
    parser.add_argument("--query", required=True, metavar="IMG", help="the image to segment")
    parser.add_argument("--category", default=None, help="the category name, as text")
    parser.add_argument(
        "--out", type=output_file, required=True, metavar="PRED.png", help="where to write the mask"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists (never an input)"
    )
    add_model_arguments(parser)


def main(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    import numpy as np
    from PIL import Image

    out = Path(args.out)
    # PIL picks the format from the extension: check it before the model runs
    if Image.registered_extensions().get(out.suffix.lower()) not in Image.SAVE:
        raise ValueError(f"--out {out}: not an image file name PIL can write (use .png)")
    inputs = [args.query, *(p for demo in args.demo for p in demo)]
    if any(Path(p).exists() and out.exists() and Path(p).samefile(out) for p in inputs):
        raise ValueError(f"--out {out} is one of the input images; choose another file name")
    if out.exists() and not args.overwrite:
        raise ValueError(f"--out {out} exists; pass --overwrite to replace it")
    model = load_model(args)
    mask = model.segment(
        args.query,
        [tuple(d) for d in args.demo],
        category=args.category,
        **sampling_options(args),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial{out.suffix}")  # written whole, then renamed
    try:
        Image.fromarray(mask.astype(np.uint8) * 255).save(
            tmp, format=Image.registered_extensions()[out.suffix.lower()]
        )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"mask ({mask.shape[0]}x{mask.shape[1]}, {mask.mean():.1%} foreground) written to {out}")
    return 0
