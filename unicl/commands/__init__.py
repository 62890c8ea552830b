"""Subcommands of the `unicl` CLI, one module each (see unicl/cli.py), and the argument types
they share.

The types are argparse `type=` callables: a bad value is rejected while the command line is
parsed, before any slow work, as `unicl COMMAND: error: argument --NAME: WHAT` (exit 2). The
path types only check: they return the text as given.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1 (counts, sizes, threads, workers)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (seeds, counts where 0 has a meaning)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def existing_file(text: str) -> str:
    """A file that must exist (an input)."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"file not found: {text}")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a file")
    return text


def existing_dir(text: str) -> str:
    """A directory that must exist (an input)."""
    path = Path(text)
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "directory not found"
        raise argparse.ArgumentTypeError(f"{text}: {what}")
    return text


def output_dir(text: str) -> str:
    """A directory to write into: it may be missing, but must not be a file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a directory")
    return text


def output_file(text: str) -> str:
    """A file to write: it may be missing, but must not be a directory."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory, expected a file name")
    return text


def torch_device(text: str) -> str:
    """A torch device name (`cpu`, `cuda`, `cuda:1`, ...) that exists on this machine."""
    from unicl.devices import pick_device

    try:
        pick_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def add_overrides(parser: argparse.ArgumentParser, example: str = "train.steps=200") -> None:
    """The positional `key=value ...` config overrides (unicl/config.py `apply_overrides`)."""
    parser.add_argument(
        "overrides",
        nargs="*",
        default=[],
        metavar="key=value",
        help=f"config overrides, e.g. {example}",
    )


def add_allow_plugins(parser: argparse.ArgumentParser) -> None:
    """`--allow-plugins`: let a model folder's config import the plugin modules it names."""
    parser.add_argument(
        "--allow-plugins",
        action="store_true",
        help="import the plugin modules the model's config lists under `plugins:` (that runs "
        "their code: only for models you trust)",
    )


def add_episode_choice(parser: argparse.ArgumentParser) -> None:
    """`--split` and `--seed`: which fixed evaluation episodes (make-episodes, eval)."""
    from unicl.tasks.sources import SPLITS

    parser.add_argument(
        "--split", choices=SPLITS, default="val", help="dataset split (default val)"
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="episode seed (default 0)")


# ---- options of the prompting commands (segment, caption) ---------------------------- #

#: the model shipped with unicl (docs/training.md "The shipped model")
DEFAULT_MODEL = "builtin:shapes_tiny"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `unicl segment` and `unicl caption`."""
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="RUN",
        help=f"a run directory, an exported model directory or builtin:NAME (default "
        f"{DEFAULT_MODEL})",
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
    add_decoding_arguments(parser)
    parser.add_argument(
        "--max-tokens",
        type=positive_int,
        default=None,
        help="cap on the generated caption's tokens",
    )


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """--beams and --length-penalty: beam search for generated answers (None: the model's)."""
    parser.add_argument(
        "--beams",
        type=positive_int,
        default=None,
        help="beam search with this many beams, 1 = greedy (default: the model's "
        "tasks.<task>.num_beams)",
    )
    parser.add_argument(
        "--length-penalty",
        type=float,
        default=None,
        help="beams are ranked by log probability / length ** this (default: the model's "
        "tasks.<task>.length_penalty)",
    )


def sampling_options(args: argparse.Namespace) -> dict:
    return {
        "temperature": args.temperature,
        "top_k": args.top_k,
        "seed": args.seed,
        "max_tokens": args.max_tokens,
        "num_beams": args.beams,
        "length_penalty": args.length_penalty,
    }


def load_model(args: argparse.Namespace):
    import unicl

    return unicl.load(args.model, device=args.device, allow_plugins=args.allow_plugins)
