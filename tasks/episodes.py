"""Fixed evaluation episodes: the same prompts for every model and every run.

The paper (arXiv 2312.02520) evaluates models with 0, 1, 2 and 3 demonstrations.
For a split and a seed, an episode file lists every query of one category group
(seen or unseen categories, separate files) with its demonstration ids for each
shot count, nested: the 1-shot demos are the first of the 2-shot demos, and so
on, so adding a demonstration never changes the others. The evaluation view
(crop box, flip, size) of every record is stored too, so evaluation never
depends on the crop code's defaults at a later time. JSON layout (format 1):

    {"format": 1, "task": "segmentation", "split": "val", "group": "unseen",
     "seed": 0, "max_shots": 3, "image_size": 64,
     "records": {"<record id>": {"category": "star", "view": {"crop": [x0, y0, x1, y1],
                                 "flip": false, "size": 64}}, ...},
     "episodes": [{"category": "star", "query": "<record id>",
                   "query_view": {...}, "shots": {"1": [a], "2": [a, b], "3": [a, b, c]}},
                  ...]}

Demonstrations are drawn per (seed, task, category) from the category's pool,
from images other than the query's; the 0-shot episode is the query alone (with
the category as text).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from unicl.ownership import claim
from unicl.seeding import keyed_rng
from unicl.tasks.base import Task
from unicl.tasks.prompt import Episode, Shot, View
from unicl.tasks.sources import category_split

EPISODE_FORMAT = 1
GROUPS = ("seen", "unseen")


def build_episode_file(
    task: Task,
    pools: dict[str, list[Any]],
    categories: Sequence[str],
    *,
    split: str,
    group: str,
    seed: int = 0,
    max_shots: int = 3,
    queries_per_category: int | None = None,
) -> dict[str, Any]:
    """The episode file (as a dict) of one task, split and category group."""
    if max_shots < 0:
        raise ValueError(f"max_shots must be >= 0, got {max_shots}")
    records: dict[str, Any] = {}
    episodes: list[dict[str, Any]] = []
    missing = sorted(set(categories) - set(pools))
    for category in sorted(set(categories) & set(pools)):
        pool = pools[category]
        rng = keyed_rng(seed, task.name, split, category)
        order = rng.permutation(len(pool))
        if queries_per_category is not None:
            order = order[:queries_per_category]
        for index in order:
            query = pool[int(index)]
            demos = task.sample_demos(pool, query, max_shots, rng)
            for record in (query, *demos):
                rid = task.record_id(record)
                if rid not in records:
                    view = task.eval_view(record)
                    records[rid] = {"category": category, "view": view.to_json()}
            ids = [task.record_id(d) for d in demos]
            episodes.append(
                {
                    "category": category,
                    "query": task.record_id(query),
                    "query_view": task.eval_view(query, query=True).to_json(),
                    "shots": {str(k): ids[:k] for k in range(1, max_shots + 1)},
                }
            )
    if not episodes:
        raise ValueError(
            f"{task.name}/{split}/{group}: no episodes (categories {list(categories)} "
            f"have no usable pool in this split)"
        )
    return {
        "format": EPISODE_FORMAT,
        "task": task.name,
        "split": split,
        "group": group,
        "seed": seed,
        "max_shots": max_shots,
        "image_size": task.image_size,
        "missing_categories": missing,
        "skipped": dict(task.last_pool_stats),
        "records": records,
        "episodes": episodes,
    }


def episode_file_name(task: str, split: str, group: str, seed: int) -> str:
    return f"{task}_{split}_{group}_seed{seed}.json"


def write_episode_files(
    tasks: dict[str, Task],
    data_cfg: Any,
    out_dir: str | Path,
    *,
    split: str = "val",
    seed: int = 0,
    max_shots: int = 3,
    queries_per_category: int | None = None,
    progress: bool = True,
) -> list[Path]:
    """Write one file per task and category group (seen / unseen) into `out_dir`."""
    from tqdm import tqdm

    out = claim(out_dir, "episodes", "episode folder")  # never writes over a user's files
    groups = category_split(data_cfg)
    written = []
    bar = tqdm(sorted(tasks.items()), desc="episode files", unit="task", disable=not progress)
    for name, task in bar:
        pools = task.pools(data_cfg, split, min_shots=max_shots)
        for group in GROUPS:
            if not set(groups[group]) & set(pools):
                continue
            data = build_episode_file(
                task,
                pools,
                groups[group],
                split=split,
                group=group,
                seed=seed,
                max_shots=max_shots,
                queries_per_category=queries_per_category,
            )
            path = out / episode_file_name(name, split, group, seed)
            path.write_text(json.dumps(data, indent=1, sort_keys=True))
            written.append(path)
    return written


def read_episode_file(path: str | Path) -> dict[str, Any]:
    """Read and check an episode file (format, nesting of the shot sets)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"episode file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: an episode file is a JSON object, got {type(data).__name__}")
    if data.get("format") != EPISODE_FORMAT:
        raise ValueError(f"{path}: episode file format {data.get('format')!r}, expected 1")
    for field in ("task", "records", "episodes", "max_shots"):
        if field not in data:
            raise ValueError(f"{path}: missing field {field!r}")
    if not isinstance(data["max_shots"], int) or data["max_shots"] < 0:
        raise ValueError(f"{path}: max_shots must be an int >= 0, got {data['max_shots']!r}")
    for i, ep in enumerate(data["episodes"]):
        if not isinstance(ep, dict) or not {"query", "shots"} <= set(ep):
            raise ValueError(f"{path}: episode {i} must be an object with 'query' and 'shots'")
        missing = [k for k in range(1, data["max_shots"] + 1) if str(k) not in ep["shots"]]
        if missing:
            raise ValueError(f"{path}: episode {i} has no {missing[0]}-shot demonstrations")
        sets = [ep["shots"][str(k)] for k in range(1, data["max_shots"] + 1)]
        for k, (small, big) in enumerate(zip(sets, sets[1:]), start=1):
            if big[:k] != small:
                raise ValueError(f"{path}: episode {i}: the {k}-shot demos are not nested")
        for rid in [ep["query"], *(sets[-1] if sets else [])]:
            if rid not in data["records"]:
                raise ValueError(f"{path}: episode {i} names record {rid!r}, not in 'records'")
    return data


def load_episodes(
    path: str | Path,
    task: Task,
    data_cfg: Any,
    shots: int,
    records: dict[str, Any] | None = None,
) -> Iterator[Episode]:
    """The episodes of a file at `shots` demonstrations, laid out by `task`.

    `records` maps record ids to records (default: read from the task's pools of
    the file's split). Views come from the file, so the prompts are exactly the
    ones every other evaluation used.
    """
    data = read_episode_file(path)
    if data["task"] != task.name:
        raise ValueError(f"{path} holds {data['task']} episodes, not {task.name}")
    if not 0 <= shots <= data["max_shots"]:
        raise ValueError(f"{path}: shots must be in [0, {data['max_shots']}], got {shots}")
    if data["image_size"] != task.image_size:
        raise ValueError(
            f"{path} was made for image_size {data['image_size']}, the task uses "
            f"{task.image_size}; make the episodes again for this setting"
        )
    if records is None:
        records = {
            task.record_id(r): r
            for pool in task.load_pools(data_cfg, data["split"]).values()
            for r in pool
        }
    views = {rid: View.from_json(r["view"]) for rid, r in data["records"].items()}

    def find(rid: str) -> Any:
        try:
            return records[rid]
        except KeyError:
            raise ValueError(
                f"{path}: record {rid!r} is not in the {data['split']} data; the episode file "
                f"belongs to another dataset"
            ) from None

    for ep in data["episodes"]:
        query = Shot(find(ep["query"]), View.from_json(ep["query_view"]))
        demo_ids = ep["shots"][str(shots)] if shots else []
        demos = [Shot(find(rid), views[rid]) for rid in demo_ids]
        episode = task.episode(query, demos, ep["category"])
        episode.meta["group"] = data.get("group", "")
        yield episode
