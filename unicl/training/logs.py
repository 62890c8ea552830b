"""Training logs: a JSONL record per logged step, TensorBoard events, a PNG of the curves.

Files in the run directory (written by rank 0 only):

    metrics.jsonl   one JSON object per logged step: step, task, loss, ce, aux, lr,
                    grad_norm, tokens_per_s, expert_load (per MoE layer), elapsed_s
    tb/             TensorBoard event files (`tensorboard --logdir runs/<name>/tb`)
    curves.png      per-task cross-entropy, learning rate, gradient norm, throughput

Per-task curves fall out of non-mixed sampling: every step trains one task, so a
step's CE is that task's CE. On resume, records at or after the resumed step (left
by a run that crashed after its last checkpoint) are dropped so that the log reads
as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"
CURVES = "curves.png"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (a missing file has none)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RunLogger:
    """Writes metrics.jsonl and TensorBoard events; draws curves.png on request."""

    def __init__(
        self,
        run_dir: str | Path,
        enabled: bool = True,
        tensorboard: bool = True,
        start_step: int = 0,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.path = self.run_dir / METRICS
        self._tb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(self.path) if r.get("step", -1) < start_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=start_step or None)

    def log(self, record: Mapping[str, Any]) -> None:
        """Append one record (must hold `step`); numbers also go to TensorBoard."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(_plain(record)) + "\n")
        if self._tb is None:
            return
        step = int(record["step"])
        task = record.get("task")
        for key, value in record.items():
            if key == "step" or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            self._tb.add_scalar(f"train/{key}", value, step)
        if task is not None and "ce" in record:
            self._tb.add_scalar(f"ce/{task}", record["ce"], step)
        for layer, load in enumerate(record.get("expert_load") or []):
            for expert, share in enumerate(load):
                self._tb.add_scalar(f"expert_load/layer{layer}/expert{expert}", share, step)

    def event(self, message: str, **fields: Any) -> None:
        """A non-metric event (resume, divergence) as a JSONL record with `event`."""
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(_plain({"event": message, **fields})) + "\n")

    def plot(self) -> Path | None:
        """Redraw curves.png from metrics.jsonl; returns its path."""
        if not self.enabled:
            return None
        return plot_curves(read_metrics(self.path), self.run_dir / CURVES)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _plain(value: Any) -> Any:
    """JSON-safe copy: tensors/arrays to lists, non-finite floats to strings."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _smooth(values: list[float], window: int) -> list[float]:
    out, total, queue = [], 0.0, []
    for v in values:
        queue.append(v)
        total += v
        if len(queue) > window:
            total -= queue.pop(0)
        out.append(total / len(queue))
    return out


def plot_curves(records: list[dict[str, Any]], out: str | Path, title: str = "") -> Path:
    """Per-task CE (raw and smoothed), lr, grad norm and tokens/s against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in records if "step" in r and isinstance(r.get("ce"), (int, float))]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    ax_ce, ax_lr, ax_gn, ax_tps = axes.ravel()
    for task in sorted({r["task"] for r in rows}):
        mine = [r for r in rows if r["task"] == task]
        steps = [r["step"] for r in mine]
        ce = [r["ce"] for r in mine]
        marker = "." if len(steps) < 30 else None  # a lone point draws no line
        (line,) = ax_ce.plot(steps, ce, alpha=0.25, marker=marker)
        ax_ce.plot(steps, _smooth(ce, 10), color=line.get_color(), label=task, marker=marker)
    ax_ce.set(xlabel="step", ylabel="cross-entropy (output tokens)", title="loss per task")
    if rows:
        ax_ce.legend()
    for ax, key, label in (
        (ax_lr, "lr", "learning rate"),
        (ax_gn, "grad_norm", "gradient norm"),
        (ax_tps, "tokens_per_s", "tokens / s"),
    ):
        points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if points:
            ax.plot(*zip(*points))
        ax.set(xlabel="step", title=label)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
