"""`unicl eval RUN`: score a model on the fixed evaluation episodes (unicl/evaluate.py).

    unicl eval runs/shapes-tiny --task segmentation --shots 0 1 2 3

Writes `eval_<task>.json` and `eval_<task>.md` (seen / unseen categories, the
model and the baselines) into `--out` (default RUN/eval) and prints the table.
The episode files are made on first use under RUN/episodes and reused after.
`--data root=worlds/other` scores the model on other data than its config names (its
episode files get a folder of their own). `--other-demos` adds the row "model, other
category's demos": the same queries answered with another category's demonstrations (the
files then end in `_other_demos`, as `--ensemble N` adds `_ensembleN`).
"""

from __future__ import annotations

import argparse

from unicl.commands import (
    add_allow_plugins,
    add_decoding_arguments,
    add_episode_choice,
    existing_dir,
    non_negative_int,
    output_dir,
    positive_int,
    torch_device,
)


def configure(parser: argparse.ArgumentParser) -> None:

    parser.add_argument(
        "run", metavar="RUN", help="a run directory, an exported model or builtin:NAME"
    )
    parser.add_argument(
        "--task",
        default="segmentation",
        help="a task of the model: segmentation (default), captioning, or a plugin's task",
    )
    parser.add_argument(
        "--shots",
        type=non_negative_int,
        nargs="+",
        default=[0, 1, 2, 3],
        help="shot counts (default 0 1 2 3)",
    )
    parser.add_argument(
        "--episodes",
        type=existing_dir,
        default=None,
        metavar="DIR",
        help="episode files (default RUN/episodes/...)",
    )
    parser.add_argument(
        "--out",
        type=output_dir,
        default=None,
        metavar="DIR",
        help="output (default RUN/eval; results/NAME for builtin:NAME)",
    )
    add_episode_choice(parser)
    parser.add_argument(
        "--data",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="score the model on other data: changes of its config's data section, e.g. "
        "root=worlds/shapes-seed1 seed=1 (a shapes world of another seed, rendered there "
        "if missing) or coco_val_ann=... coco_val_images=...",
    )
    parser.add_argument(
        "--queries-per-category",
        type=non_negative_int,
        default=10,
        help="queries per category when the episode files are made (default 10; 0 = all)",
    )
    parser.add_argument(
        "--ensemble",
        type=positive_int,
        default=1,
        help="average each query's mask over this many demo sets (rotations; default 1)",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=8, help="episodes per generation batch"
    )
    parser.add_argument(
        "--max-tokens", type=positive_int, default=None, help="cap on caption tokens"
    )
    add_decoding_arguments(parser)
    parser.add_argument("--no-baselines", action="store_true", help="skip the baselines")
    parser.add_argument(
        "--other-demos",
        action="store_true",
        help="also answer every k-shot query (k >= 1) with another category's demonstrations "
        "(does the model read the category from them?)",
    )
    parser.add_argument(
        "--device", type=torch_device, default=None, help="torch device (default: cuda if present)"
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: torch's choice)",
    )
    add_allow_plugins(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    import unicl
    from unicl.config import UniclConfig, with_data
    from unicl.devices import cpu_threads
    from unicl.evaluate import EvalOptions, ensure_episode_files, episode_dir, evaluate
    from unicl.model_files import BUILTIN_PREFIX
    from unicl.tasks import TASKS

    if args.task not in TASKS and not args.allow_plugins:
        raise ValueError(
            f"--task: {args.task!r} is not a built-in task ({', '.join(sorted(TASKS))}); "
            "a plugin's task needs --allow-plugins"
        )
    if args.data:
        with_data(UniclConfig(), args.data)  # a bad key fails before the model loads
    opts = EvalOptions(
        shots=args.shots,
        split=args.split,
        seed=args.seed,
        queries_per_category=args.queries_per_category or None,
        batch_size=args.batch_size,
        baselines=not args.no_baselines,
        ensemble=args.ensemble,
        max_tokens=args.max_tokens,
        num_beams=args.beams,
        length_penalty=args.length_penalty,
        data=tuple(args.data),
        other_demos=args.other_demos,
    )
    model = unicl.load(args.run, device=args.device, allow_plugins=args.allow_plugins)
    if args.data:
        model.predictor.cfg = with_data(model.predictor.cfg, args.data)
    run = Path(args.run)
    if args.run.startswith(BUILTIN_PREFIX) and args.out is None:
        # never write into the installed package: a shipped model's results go to results/
        args.out = str(Path("results") / args.run[len(BUILTIN_PREFIX) :])
    if args.episodes is not None:
        episodes = Path(args.episodes)
    else:
        # episode files go beside the results (never into an exported model's folder)
        base = Path(args.out) if args.out else run
        episodes = ensure_episode_files(
            model.predictor,
            episode_dir(base / "episodes", opts),
            opts,
            progress=not args.no_progress,
        )
    with cpu_threads(args.threads):
        table = evaluate(
            model, args.task, episodes, opts, run=str(run), progress=not args.no_progress
        )
    suffix = f"_ensemble{opts.ensemble}" if opts.ensemble > 1 else ""
    suffix += "_other_demos" if opts.other_demos else ""
    json_path, md_path = table.save(
        Path(args.out) if args.out else run / "eval", f"eval_{args.task}{suffix}"
    )
    print(table.to_markdown())
    print(f"written: {json_path} and {md_path}")
    return 0
