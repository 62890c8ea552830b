"""The `unicl` command line.

Each subcommand is a small module in unicl/commands/ exposing
`configure(parser)` (adds its arguments) and `main(args) -> int`. Modules are
imported only when their command runs, so `unicl --help` stays fast and a
broken optional dependency of one command never breaks the others.

Bad input is reported here, once for every command: `main` runs the command and
turns a user error into one message on stderr, `unicl COMMAND: error: WHAT`, and
exit status 2 (argparse's own status for a bad command line). A diverged
training run exits with 3 and Ctrl-C with 130. `unicl --traceback COMMAND ...`
shows the full traceback instead, for debugging.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

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

#: exceptions that mean "the input was wrong", not "unicl has a bug": bad values and
#: types (the config module's ConfigError is a ValueError), missing or unreadable
#: files, unknown registry names (RegistryError, a ValueError) and plugins or optional
#: packages that cannot be imported. Anything else (a KeyError, a RuntimeError) is a bug,
#: shown with its traceback.
USER_ERRORS = (ValueError, TypeError, OSError, ImportError)
#: exit status of a training run stopped because its loss diverged (unicl train, unicl demo)
EXIT_DIVERGED = 3
#: exit status after Ctrl-C (128 + SIGINT, as shells report it)
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unicl",
        description="unicl: unified in-context visual understanding "
        "(few-shot segmentation and region captioning).",
    )
    parser.add_argument("--version", action="version", version=f"unicl {__version__}")
    parser.add_argument(
        "--traceback",
        action="store_true",
        help="on an error, show the full Python traceback instead of a short message",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        # the real arguments are added only for the command that runs (see main)
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # everything after the command name is left in `rest` for the command's own parser
    top, rest = parser.parse_known_args(argv)
    if top.command is None:
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        parser.print_help()
        return 0
    name = top.command
    return run_command(name, lambda: _run(name, rest), show_traceback=top.traceback)


def _run(name: str, argv: list[str]) -> int | None:
    """Import the command, parse its arguments and run it."""
    module = importlib.import_module(f"unicl.commands.{COMMANDS[name][0]}")
    parser = argparse.ArgumentParser(prog=f"unicl {name}", description=COMMANDS[name][1])
    module.configure(parser)
    # intermixed: options may stand anywhere, also after `key=value` overrides
    return module.main(parser.parse_intermixed_args(argv))


def run_command(name: str, run: Callable[[], int | None], show_traceback: bool = False) -> int:
    """`run()`'s exit status; a user error becomes one message on stderr (module docstring)."""
    try:
        return int(run() or 0)
    except KeyboardInterrupt:
        if show_traceback:
            raise
        return _fail(name, "interrupted", EXIT_INTERRUPTED)
    except USER_ERRORS as err:
        if show_traceback:
            raise
        return _fail(name, f"error: {_describe(err)}", 2)
    except RuntimeError as err:
        from unicl.training.trainer import TrainingDiverged

        if show_traceback or not isinstance(err, TrainingDiverged):
            raise
        return _fail(name, f"stopped: {err}", EXIT_DIVERGED)


def _describe(err: BaseException) -> str:
    """The error's message; an OSError from the system names its file first."""
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        return f"{err.filename}: {err.strerror}"
    return str(err) or type(err).__name__


def _fail(name: str, message: str, status: int) -> int:
    print(f"unicl {name}: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
