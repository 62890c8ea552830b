"""Learnability benchmark: train named variants for one budget and score them on held-out episodes.

    python tools/bench_learning.py --variants paper all --steps 150          # 2 CPU cores
    python tools/bench_learning.py --variants paper all --steps 3000 \\
        --override train.batch_size=32 train.micro_batch=32 --device cuda    # a GPU

Every variant trains from scratch on the same world (`--world`, `--world-seed`) for the same
number of steps, then is evaluated on the same fixed episodes (`--episode-seed`: tune on one
seed, report on another) at 0, 1 and 3 shots, seen and unseen categories, with object-centred
and whole-image queries, and diagnosed (unicl/learning.py). Prints one table with the
baselines and writes every number as JSON. Variants: unicl/learning.py `VARIANTS`.
"""

from __future__ import annotations

import argparse
import sys

from unicl.learning import VARIANTS, BenchOptions, run_variant, save_results, summary_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["paper", "all"], help=", ".join(VARIANTS))
    parser.add_argument("--config", default="shapes_tiny")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--world", default="worlds/bench")
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--episode-seed", type=int, default=0)
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 1, 3])
    parser.add_argument("--queries-per-category", type=int, default=10)
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--device", default=None)
    parser.add_argument("--override", nargs="*", default=[], help="key=value for every variant")
    parser.add_argument("--tag", default="", help="suffix of the variants' names (recipe sweeps)")
    parser.add_argument("--eval-batch", type=int, default=8, help="episodes answered together")
    parser.add_argument("--json", default=None, help="results file (default OUT/results.json)")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; valid: {', '.join(VARIANTS)}")
    opts = BenchOptions(
        config=args.config,
        steps=args.steps,
        world=args.world,
        world_seed=args.world_seed,
        episode_seed=args.episode_seed,
        shots=tuple(args.shots),
        queries_per_category=args.queries_per_category,
        out=args.out,
        device=args.device,
        progress=args.progress,
        overrides=tuple(args.override),
        tag=args.tag,
        eval_batch=args.eval_batch,
    )
    results = []
    path = args.json or f"{args.out}/results_world{args.world_seed}_ep{args.episode_seed}.json"
    for name in args.variants:
        print(f"[bench_learning] {name}: {VARIANTS[name][0]}", flush=True)
        results.append(run_variant(name, opts))
        save_results(results, path)
        print(summary_table(results[-1:]), flush=True)
    print(summary_table(results))
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
