"""The `unicl` command line.

Each subcommand is a small module in unicl/commands/ exposing
`configure(parser)` (adds its arguments) and `main(args) -> int`. Modules are
imported only when their command runs, so `unicl --help` stays fast and a
broken optional dependency of one command never breaks the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from unicl._version import __version__

#: command name -> (module under unicl.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "build the shapes world, train (or reuse) the tiny model, evaluate, show"),
    "train": ("train", "train a model: unicl train CONFIG [key=value ...]"),
    "eval": ("evaluate", "evaluate a run on the fixed evaluation episodes"),
    "segment": ("segment", "segment a query image from (image, mask) demonstrations"),
    "caption": ("caption", "caption a region of a query image from demonstrations"),
    "export": ("export", "export a training run to a directory that unicl.load reads"),
    "make-world": ("make_world", "render the synthetic shapes world in COCO / VG formats"),
    "make-episodes": ("make_episodes", "write fixed evaluation episode files"),
    "train-vqgan": ("train_vqgan", "train the VQ-GAN image tokenizer"),
    "fetch-bpe": ("fetch_bpe", "install GPT-2's BPE table for offline use"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unicl",
        description="unicl: unified in-context visual understanding "
        "(few-shot segmentation and region captioning).",
    )
    parser.add_argument("--version", action="version", version=f"unicl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        # the real arguments are added only for the command that runs (see main)
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        args = parser.parse_args(argv)  # prints help / version / an error
        parser.print_help()
        return 0 if args.command is None else 2
    name = argv[0]
    module = importlib.import_module(f"unicl.commands.{COMMANDS[name][0]}")
    sub = argparse.ArgumentParser(prog=f"unicl {name}", description=COMMANDS[name][1])
    module.configure(sub)
    args = sub.parse_args(argv[1:])
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
