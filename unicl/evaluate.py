"""Evaluation over the fixed evaluation episodes (PAPER.md "Results to compare against").

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
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: metric key -> (column title, format, higher is better)
METRICS: dict[str, tuple[str, str, bool]] = {
    "miou": ("mIoU", "{:.2f}", True),
    "mae": ("MAE", "{:.3f}", False),
    "bleu4": ("BLEU-4", "{:.2f}", True),
    "meteor": ("METEOR", "{:.2f}", True),
    "cider": ("CIDEr", "{:.2f}", True),
    "map": ("mAP", "{:.2f}", True),
}
TASK_METRICS = {
    "segmentation": ("miou", "mae"),
    "captioning": ("bleu4", "meteor", "cider", "map"),
}
SPLITS = ("seen", "unseen")
MODEL = "model"
BASELINE_BACKGROUND = "all background"
BASELINE_COPY = "copy demo mask"


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
        keys = TASK_METRICS.get(self.task) or sorted({k for r in self.rows for k in r.metrics})
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
