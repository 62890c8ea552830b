"""Sweep the guided refinement of segmentation answers (`mask_refine: guided`) on one model.

    python tools/sweep_mask_refine.py builtin:shapes_tiny --episodes DIR --seed 1 \\
        --radii 0.0625 0.125 0.25 0.375 0.5 --eps 1e-3 1e-2

Answers the episode files in DIR (as `unicl eval` writes them:
segmentation_val_<group>_seed<S>.json) once, without refinement, then cuts each answer's map (the
task's `mask_threshold`) unrefined and refined with every radius (a share of the query view's
side) and ridge; prints the class-wise mIoU of each, seen / unseen, as `unicl eval`
reports it. Choose on validation episodes (a seed you do not report), then score the choice with
`unicl eval` on held-out ones.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from unicl.tasks.episodes import GROUPS, episode_file_name, load_episodes
from unicl.tasks.metrics import SegmentationMeter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a run directory, an exported model or builtin:NAME")
    parser.add_argument("--episodes", required=True, help="episode files (unicl eval's)")
    parser.add_argument("--seed", type=int, default=1, help="their episode seed")
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--radii", type=float, nargs="+", default=[0.0625, 0.125, 0.25, 0.5])
    parser.add_argument("--eps", type=float, nargs="+", default=[1e-3, 1e-2])
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", default=None, help="write the table's numbers here")
    args = parser.parse_args(argv)

    import unicl

    model = unicl.load(args.model, device=args.device)
    predictor = model.predictor
    task = predictor.tasks["segmentation"]
    task.mask_refine = "none"  # answer once; every setting refines the same maps
    settings = [("none", None, None)] + [("guided", r, e) for r in args.radii for e in args.eps]
    meters = {s: {} for s in settings}
    for group in GROUPS:
        path = Path(args.episodes) / episode_file_name("segmentation", "val", group, args.seed)
        if not path.is_file():
            continue
        episodes = list(load_episodes(path, task, predictor.cfg.data, args.shots))
        answers = predictor.answer(episodes, predictor.sampling({}))
        for episode, answer in zip(episodes, answers):
            truth = episode.meta["query_record"].load_mask()
            grey = answer.value.mask_image
            for setting in settings:
                kind, radius, eps = setting
                refined = grey if kind == "none" else task.refine(episode, grey, radius, eps)
                meter = meters[setting].setdefault(group, SegmentationMeter())
                meter.update(task.cut(refined).mask, truth, episode.category)
        print(f"answered {len(episodes)} {group} episodes", file=sys.stderr, flush=True)
    if not any(meters[settings[0]].values()):
        parser.error(f"no segmentation episode files of seed {args.seed} in {args.episodes}")
    groups = list(meters[settings[0]])
    print(f"| refinement | radius | eps | {' | '.join(f'{g} mIoU' for g in groups)} |")
    print("|---|---|---|" + "---|" * len(groups))
    rows = []
    for setting, by_group in meters.items():
        kind, radius, eps = setting
        mious = {g: 100.0 * by_group[g].class_miou for g in groups}
        rows.append({"refine": kind, "radius": radius, "eps": eps, "miou": mious})
        cells = " | ".join(f"{mious[g]:.2f}" for g in groups)
        shown = ["" if v is None else str(v) for v in (radius, eps)]
        print(f"| {kind} | {shown[0]} | {shown[1]} | {cells} |")
    if args.json:
        meta = {"model": args.model, "seed": args.seed, "shots": args.shots}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
