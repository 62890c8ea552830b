"""`unicl make-episodes [options] OUT [key=value ...]`: write the fixed evaluation episodes.

The files (tasks/episodes.py) list every query of a split with its 1..N-shot
demonstrations and the views of all records, one file per task and category
group (seen / unseen). Options may stand anywhere; config overrides follow OUT.
"""

from __future__ import annotations

import argparse

from unicl.commands import add_episode_choice, add_overrides, output_dir, positive_int


def configure(parser: argparse.ArgumentParser) -> None:

    parser.add_argument(
        "out", type=output_dir, help="directory for the episode files (one per task and group)"
    )
    parser.add_argument(
        "--config", default=None, help="config file or packaged config name (default: defaults)"
    )
    add_episode_choice(parser)
    parser.add_argument(
        "--shots",
        type=positive_int,
        default=3,
        help="largest shot count; files hold 1..shots (default 3)",
    )
    parser.add_argument(
        "--queries-per-category",
        type=positive_int,
        default=None,
        help="at most this many queries per category (default: every record)",
    )
    add_overrides(parser)


def main(args: argparse.Namespace) -> int:
    from unicl.config import load_config

    # the config first: a bad one is reported before the slow imports (torch)
    cfg = load_config(args.config, args.overrides)

    from unicl.plugins import import_plugins
    from unicl.streams import build_tasks
    from unicl.tasks.episodes import write_episode_files
    from unicl.vocab import Vocabulary

    import_plugins(cfg.plugins)
    # the vocabulary lets tasks skip records that could never be packed (too-long captions)
    tasks = build_tasks(cfg, Vocabulary.from_config(cfg))
    paths = write_episode_files(
        tasks,
        cfg.data,
        args.out,
        split=args.split,
        seed=args.seed,
        max_shots=args.shots,
        queries_per_category=args.queries_per_category,
    )
    for path in paths:
        print(f"wrote {path}")
    return 0
