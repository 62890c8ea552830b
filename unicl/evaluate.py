"""Evaluation over the fixed evaluation episodes (arXiv 2312.02520, its reported results).

Protocol (docs/evaluation.md): every query of a split is paired with the same
k = 0..3 demonstrations every time, read from the episode files of
tasks/episodes.py, so two models (or two runs) are scored on identical prompts.
Categories are reported separately as *seen* (present in training) and *unseen*
(held out; in-context generalisation, not memory).

Segmentation: mIoU (mean over categories of the per-category IoU accumulated over
that category's queries) and MAE (mean absolute error of the binary masks), next
to two reference baselines scored on the same episodes:
  - "all background": predicts an empty mask;
  - "copy demo mask": the first demonstration's mask, seen through its crop, is
    pasted through the query's crop back onto the query (what a model that only
    copies the layout of the demonstration would get).
Captioning: BLEU-4, METEOR and CIDEr of the generated region captions against the
reference, and DenseCap's mAP over (box IoU x METEOR) thresholds.

With `other_demos`, every k-shot query (k >= 1) is answered a second time with the
demonstrations of another category's episode (`other_category_demos`; with an ensemble, each
of its demonstration sets from that episode's) and scored as the row
"model, other category's demos": a model that reads the category from its demonstrations
scores lower there; one that answers whatever is salient scores the same.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from unicl.predictor import Prediction, decoding
from unicl.tasks.episodes import (
    GROUPS,
    episode_file_name,
    load_episodes,
    read_episode_file,
    write_episode_files,
)
from unicl.tasks.scoring import BASELINE_BACKGROUND, BASELINE_COPY, MODEL, MODEL_OTHER_DEMOS

#: metric key -> (column title, format, higher is better)
METRICS: dict[str, tuple[str, str, bool]] = {
    "miou": ("mIoU", "{:.2f}", True),
    "mae": ("MAE", "{:.3f}", False),
    "bleu4": ("BLEU-4", "{:.2f}", True),
    "meteor": ("METEOR", "{:.2f}", True),
    "cider": ("CIDEr", "{:.2f}", True),
    "map": ("mAP", "{:.2f}", True),
    "shape_acc": ("shape %", "{:.1f}", True),
    "colour_acc": ("colour %", "{:.1f}", True),
    "accuracy": ("accuracy %", "{:.1f}", True),
}
SPLITS = ("seen", "unseen")


@dataclasses.dataclass
class Row:
    """Scores of one method at one shot count on one category split."""

    method: str
    shots: int
    split: str
    episodes: int
    metrics: dict[str, float]


@dataclasses.dataclass
class EvalTable:
    """An evaluation result: rows of (method, shots, split) -> metrics."""

    task: str
    run: str
    rows: list[Row] = dataclasses.field(default_factory=list)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def get(self, method: str, shots: int, split: str) -> Row | None:
        for row in self.rows:
            if (row.method, row.shots, row.split) == (method, shots, split):
                return row
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "run": self.run,
            "meta": self.meta,
            "rows": [dataclasses.asdict(r) for r in self.rows],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalTable:
        rows = [Row(**r) for r in data["rows"]]
        return cls(task=data["task"], run=data["run"], rows=rows, meta=data.get("meta", {}))

    def to_markdown(self) -> str:
        """A Markdown table: one line per (method, shots), seen and unseen side by side."""
        keys = sorted({k for r in self.rows for k in r.metrics}, key=_metric_order)
        head = ["method", "shots"]
        for split in SPLITS:
            head += [f"{split} {METRICS.get(k, (k,))[0]}" for k in keys] + [f"{split} n"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        seen_keys = []
        for row in self.rows:
            if (row.method, row.shots) not in seen_keys:
                seen_keys.append((row.method, row.shots))
        for method, shots in seen_keys:
            cells = [method, str(shots)]
            for split in SPLITS:
                row = self.get(method, shots, split)
                for key in keys:
                    value = None if row is None else row.metrics.get(key)
                    fmt = METRICS.get(key, (key, "{:.3f}"))[1]
                    cells.append("-" if value is None else fmt.format(value))
                cells.append("-" if row is None else str(row.episodes))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def save(self, directory: str | Path, stem: str | None = None) -> tuple[Path, Path]:
        """Write `<stem>.json` and `<stem>.md` (stem default: `eval_<task>`)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        stem = stem or f"eval_{self.task}"
        json_path = directory / f"{stem}.json"
        md_path = directory / f"{stem}.md"
        json_path.write_text(json.dumps(self.to_json(), indent=2))
        md_path.write_text(f"# {self.task} evaluation of {self.run}\n\n{self.to_markdown()}")
        return json_path, md_path


def load_table(path: str | Path) -> EvalTable:
    """An EvalTable written by `EvalTable.save` (the .json file)."""
    return EvalTable.from_json(json.loads(Path(path).read_text()))


def check_shots(shots: Sequence[int], max_shots: int = 3) -> list[int]:
    """Shot counts as a sorted unique list, each in [0, max_shots]."""
    out = sorted({int(s) for s in shots})
    bad = [s for s in out if not 0 <= s <= max_shots]
    if not out or bad:
        raise ValueError(f"shots must be integers in [0, {max_shots}], got {list(shots)}")
    return out


# --------------------------------------------------------------------------- #
# running an evaluation
# --------------------------------------------------------------------------- #


@dataclasses.dataclass
class EvalOptions:
    """What `evaluate` runs (the `unicl eval` options)."""

    shots: Sequence[int] = (0, 1, 2, 3)
    split: str = "val"
    seed: int = 0  # episode seed
    queries_per_category: int | None = 10  # None: every record of the split
    batch_size: int = 8  # episodes generated together
    baselines: bool = True
    #: demonstration sets averaged per query (1 = none): rotations of the max-shot demos
    ensemble: int = 1
    max_tokens: int | None = None  # cap on generated caption tokens
    num_beams: int | None = None  # beams for generated answers (None: the task's default)
    length_penalty: float | None = None  # beams ranked by log prob / length ** this
    #: `key=value` changes of the model's data config (other data than it was trained on)
    data: Sequence[str] = ()
    #: also answer every k-shot query (k >= 1) with another category's demonstrations
    other_demos: bool = False


def episode_dir(root: str | Path, opts: EvalOptions) -> Path:
    """Where the episode files of these options live under `root` (episodes of other data,
    `opts.data`, in a folder of their own)."""
    limit = "all" if opts.queries_per_category is None else f"q{opts.queries_per_category}"
    name = f"{opts.split}_seed{opts.seed}_{limit}"
    if opts.data:
        digest = hashlib.sha1("\n".join(sorted(opts.data)).encode()).hexdigest()[:10]
        name += f"_data-{digest}"
    return Path(root) / name


def ensure_episode_files(
    engine: Any, directory: Path, opts: EvalOptions, max_shots: int = 3, progress: bool = True
):
    """The episode files (made once with tasks/episodes.py, then reused)."""
    check_shots(opts.shots, max_shots)  # before the (slow) world and episode files
    if not any(directory.glob("*.json")):
        write_episode_files(
            engine.tasks,
            engine.cfg.data,
            directory,
            split=opts.split,
            seed=opts.seed,
            max_shots=max_shots,
            queries_per_category=opts.queries_per_category,
            progress=progress,
        )
    return directory


def _episode_files(directory: Path, task: str, opts: EvalOptions) -> dict[str, Path]:
    files = {}
    for group in GROUPS:
        path = directory / episode_file_name(task, opts.split, group, opts.seed)
        if path.is_file():
            files[group] = path
    if not files:
        raise FileNotFoundError(
            f"no {task} episode files for split {opts.split!r}, seed {opts.seed} in {directory}"
        )
    return files


def rotations(episode: Any, full: Any, k: int, n: int) -> list[Any]:
    """`n` demonstration sets for a k-shot query: rotations of the max-shot demo list.

    Set j uses demos (j, j+1, ..., j+k-1) mod m of the m-shot episode `full`; set 0
    is the k-shot episode itself (the files nest their shot sets). For k = m the sets
    are orderings of the same demonstrations, for k < m different demonstrations.
    """
    m = full.shots
    sets = [episode]
    for j in range(1, min(n, m) if k else 1):
        pairs = [full.pairs[(j + i) % m] for i in range(k)] + [full.query]
        sets.append(dataclasses.replace(episode, pairs=pairs))
    return sets


def other_category_donors(episodes: Sequence[Any]) -> list[int]:
    """For each episode, the index of the episode whose demonstrations replace its own.

    The donor is the first episode of another category, searched cyclically from half the
    list away, whose demonstrations do not come from the query's image (episode files list
    their queries category by category, so neighbouring queries get different donors and
    each category meets several others). [] when the episodes hold fewer than two categories,
    no demonstrations, or an episode finds no donor.
    """
    n = len(episodes)
    if len({e.category for e in episodes}) < 2 or not any(e.pairs[:-1] for e in episodes):
        return []
    donors = []
    for i, episode in enumerate(episodes):
        image = episode.meta.get("query_image")
        found = next(
            (
                d
                for d in ((i + n // 2 + j) % n for j in range(n))
                if episodes[d].category != episode.category
                and (image is None or image not in episodes[d].meta.get("demo_images", ()))
            ),
            None,
        )
        if found is None:
            return []
        donors.append(found)
    return donors


def with_demos_of(episode: Any, donor: Any) -> Any:
    """`episode` (its query, prefix and category) with `donor`'s demonstrations."""
    meta = dict(episode.meta)
    for key in ("demo_ids", "demo_images"):
        if key in donor.meta:
            meta[key] = donor.meta[key]
    return dataclasses.replace(episode, pairs=[*donor.pairs[:-1], episode.pairs[-1]], meta=meta)


def _nth(sets: Sequence[Any], j: int) -> Any:
    """Demonstration set j of a query, or its last when it has fewer."""
    return sets[min(j, len(sets) - 1)]


def other_category_demos(episodes: Sequence[Any]) -> list[Any]:
    """Each episode with the demonstrations of another category's (`other_category_donors`)."""
    donors = other_category_donors(episodes)
    return [with_demos_of(e, episodes[d]) for e, d in zip(episodes, donors)]


def evaluate(
    model: Any,
    task: str,
    episodes: str | Path,
    opts: EvalOptions | None = None,
    run: str = "",
    progress: bool = True,
) -> EvalTable:
    """Score `model` (an InContextModel) on the episode files in `episodes` (see module doc)."""
    opts = opts or EvalOptions()
    shots = check_shots(opts.shots)
    predictor = model.predictor
    the_task = predictor.require_task(task)
    files = _episode_files(Path(episodes), task, opts)
    records = {
        the_task.record_id(r): r
        for pool in the_task.load_pools(predictor.cfg.data, opts.split).values()
        for r in pool
    }
    ensemble = opts.ensemble if the_task.ensembles else 1
    plan = []  # (group, shots, [episode sets])
    for group, path in files.items():
        max_shots = read_episode_file(path)["max_shots"]
        if shots[-1] > max_shots:
            raise ValueError(f"{path} holds episodes of up to {max_shots} shots, not {shots[-1]}")
        full = list(load_episodes(path, the_task, predictor.cfg.data, max_shots, records))
        for k in shots:
            plain = list(load_episodes(path, the_task, predictor.cfg.data, k, records))
            plan.append((group, k, [rotations(e, f, k, ensemble) for e, f in zip(plain, full)]))
    parallel = any(sets and sets[0][0].parallel for _, _, sets in plan)
    sampling = decoding(sampling_of(predictor, opts), the_task)
    table = EvalTable(
        task=task,
        run=run,
        meta={
            "options": options_dict(opts),
            # how answers were read: one parallel pass, or generated with these beams
            "decoding": "parallel"
            if parallel
            else {"num_beams": sampling.num_beams, "length_penalty": sampling.length_penalty},
            "files": _names(files),
            "model": str(predictor.model_dir) if predictor.model_dir else None,
            "weights": predictor.model_id,
        },
    )
    total = sum(len(sets) * (1 + (opts.other_demos and k > 0)) for _, k, sets in plan)
    scorer = the_task.scorer(opts.baselines)
    try:
        with tqdm(total=total, desc=f"eval {task}", unit="query", disable=not progress) as bar:
            for group, k, sets in plan:
                answers = answer_groups(predictor, the_task, sets, opts, bar)
                rows = scorer.score([s[0] for s in sets], answers, k)
                for method, (n, metrics) in rows.items():
                    table.rows.append(Row(method, k, group, n, metrics))
                donors = other_category_donors([s[0] for s in sets]) if opts.other_demos else []
                if donors:
                    # every demonstration set of a query (ensembles) from its donor's sets
                    swapped = [
                        [with_demos_of(e, _nth(sets[d], j)) for j, e in enumerate(s)]
                        for s, d in zip(sets, donors)
                    ]
                    got = answer_groups(predictor, the_task, swapped, opts, bar)
                    n, metrics = scorer.score([s[0] for s in swapped], got, k)[MODEL]
                    table.rows.append(Row(MODEL_OTHER_DEMOS, k, group, n, metrics))
                elif opts.other_demos and k > 0:  # one category only: nothing to swap
                    bar.update(len(sets))
    finally:
        scorer.close()
    table.rows.sort(key=lambda r: (_method_rank(r.method), r.shots, SPLITS.index(r.split)))
    return table


def _metric_order(key: str) -> tuple[int, str]:
    """Metrics in the order of METRICS (the built-in tasks' columns), others after, by name."""
    order = list(METRICS)
    return (order.index(key) if key in order else len(order), key)


def _method_rank(method: str) -> int:
    order = [MODEL, MODEL_OTHER_DEMOS, BASELINE_BACKGROUND, BASELINE_COPY]
    return order.index(method) if method in order else len(order)


def sampling_of(predictor: Any, opts: EvalOptions) -> dict[str, Any]:
    """The checked sampling options of an evaluation (greedy unless beams are asked for)."""
    return predictor.sampling(
        {
            "max_tokens": opts.max_tokens,
            "num_beams": opts.num_beams,
            "length_penalty": opts.length_penalty,
        }
    )


def options_dict(opts: EvalOptions) -> dict[str, Any]:
    out = dataclasses.asdict(opts)
    out["shots"] = list(out["shots"])
    out["data"] = list(out["data"])
    if not out["data"]:  # the tables of the model's own data read as before
        del out["data"]
    if not out["other_demos"]:
        del out["other_demos"]
    return out


def _names(files: dict[str, Path]) -> dict[str, str]:
    return {group: path.name for group, path in files.items()}


def answer_groups(predictor: Any, task: Any, sets, opts: EvalOptions, bar) -> list[Any]:
    """The model's answer to every query of a group, combined over its demonstration sets.

    `sets[i]` are query i's episodes, one per demonstration set (`rotations`); the sets are
    answered in batches of `opts.batch_size` and combined by the task (`Task.combine`).
    """
    options = sampling_of(predictor, opts)
    n_sets = max(len(s) for s in sets)
    # answers[j][i]: query i's answer from its j-th demonstration set
    answers = [[None] * len(sets) for _ in range(n_sets)]
    for j in range(n_sets):
        order = [i for i, s in enumerate(sets) if len(s) > j]
        for start in range(0, len(order), opts.batch_size):
            chunk = order[start : start + opts.batch_size]
            got = predictor.answer([sets[i][j] for i in chunk], options)
            for i, answer in zip(chunk, got):
                answers[j][i] = answer
            if j == 0:
                bar.update(len(chunk))
    combined = []
    for i, episode_sets in enumerate(sets):
        mine = [answers[j][i] for j in range(len(episode_sets))]
        value = task.combine([a.value for a in mine])
        combined.append(Prediction(value, mine[0].tokens, mine[0].probs))
    return combined
