"""`unicl demo`: the whole project in one command, and the pictures it leaves behind.

When this install ships a trained tiny model (`builtin:shapes_tiny`, unicl/model_files.py),
`unicl demo` renders the shapes world and evaluates that model on the fixed evaluation
episodes. Otherwise, and with `--retrain` (the from-scratch CPU path; its results go to
results/<name>-retrained, beside the shipped model's), it trains the tiny default (or reuses a
finished run) and evaluates that. Either way it writes a results folder:

    grid.png        demonstrations | query | prediction | ground truth, one row per
                    episode, seen and unseen categories
    captions.md     a sample of region captions next to the reference
    metrics.md/.json  the evaluation table (unicl/evaluate.py)
    loss.png        the training loss curves

Every step is reused when its output already exists (world, token cache, run,
evaluation), so a second `unicl demo` only redraws the figures.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from unicl.config import load_config
from unicl.devices import cpu_threads
from unicl.evaluate import (
    EvalOptions,
    ensure_episode_files,
    episode_dir,
    evaluate,
    load_table,
    options_dict,
)
from unicl.model_files import builtin_models
from unicl.ownership import claim, clear_own, require_own
from unicl.tasks.episodes import load_episodes
from unicl.tasks.metrics import binary_iou
from unicl.tasks.sources import ensure_world
from unicl.training.logs import METRICS, plot_curves, read_metrics
from unicl.training.run import run_dir_of, train

#: side of one grid cell in pixels
CELL = 112
#: overlay colour of masks in the grid (RGB) and its opacity
MASK_RGB = np.array([255, 40, 40], np.float32)
MASK_ALPHA = 0.55


@dataclasses.dataclass
class GridRow:
    """One episode shown in the grid."""

    category: str
    unseen: bool
    demos: list[tuple[np.ndarray, np.ndarray]]  # (H, W, 3) uint8 image, (H, W) bool mask
    query: np.ndarray  # (H, W, 3) uint8
    prediction: np.ndarray  # (H, W) bool
    truth: np.ndarray  # (H, W) bool
    iou: float | None = None


def boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of `mask` with a 4-neighbour outside it, (H, W) bool."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`image` with `mask` tinted red and outlined in white, as (H, W, 3) uint8."""
    out = image.astype(np.float32)  # (H, W, 3)
    out[mask] = (1 - MASK_ALPHA) * out[mask] + MASK_ALPHA * MASK_RGB  # (N, 3)
    # the outline keeps the mask visible on red objects too
    out[boundary(mask)] = 255.0
    return out.round().clip(0, 255).astype(np.uint8)


def _cell(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array).convert("RGB").resize((CELL, CELL), Image.Resampling.BILINEAR)


def render_grid(rows: Sequence[GridRow], path: str | Path) -> Path:
    """Draw `rows` as a PNG grid: k demo overlays, query, prediction, ground truth.

    Rows may have different numbers of demonstrations; the grid is as wide as the
    row with the most, shorter rows leave those cells blank.
    """
    if not rows:
        raise ValueError("render_grid: no rows to draw")
    font = ImageFont.load_default()
    k = max(len(r.demos) for r in rows)
    label_w, head_h, pad = 110, 18, 4
    cols = k + 3
    width = label_w + cols * (CELL + pad)
    height = head_h + len(rows) * (CELL + pad)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    heads = [f"demo {i + 1}" for i in range(k)] + ["query", "prediction", "ground truth"]
    for c, text in enumerate(heads):
        draw.text((label_w + c * (CELL + pad) + 4, 3), text, fill="black", font=font)
    for r, row in enumerate(rows):
        y = head_h + r * (CELL + pad)
        split = "unseen" if row.unseen else "seen"
        draw.text((4, y + 4), row.category, fill="black", font=font)
        draw.text((4, y + 18), f"({split})", fill="firebrick" if row.unseen else "gray", font=font)
        if row.iou is not None:
            draw.text((4, y + 32), f"IoU {row.iou:.2f}", fill="black", font=font)
        for c, (image, mask) in enumerate(row.demos):
            canvas.paste(_cell(overlay(image, mask)), (label_w + c * (CELL + pad), y))
        x = label_w + k * (CELL + pad)
        canvas.paste(_cell(row.query), (x, y))
        canvas.paste(_cell(overlay(row.query, row.prediction)), (x + CELL + pad, y))
        canvas.paste(_cell(overlay(row.query, row.truth)), (x + 2 * (CELL + pad), y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


# --------------------------------------------------------------------------- #
# the pipeline
# --------------------------------------------------------------------------- #

DEFAULT_CONFIG = "shapes_tiny"
#: rows of the grid: this many seen and unseen categories
GRID_SEEN, GRID_UNSEEN = 4, 3
#: caption examples in captions.md
CAPTION_SAMPLES = 10


@dataclasses.dataclass
class DemoOptions:
    """What `unicl demo` does (its command-line options)."""

    config: str = DEFAULT_CONFIG
    overrides: Sequence[str] = ()
    run: str | None = None  # default: the config's run directory (runs/<name>)
    out: str | None = None  # default: results/<name>
    retrain: bool = False
    shots: Sequence[int] = (0, 1, 2, 3)
    queries_per_category: int = 3
    max_tokens: int | None = None  # cap on generated caption tokens (None: the layout's)
    #: torch threads while evaluating on CPU (see unicl.devices.cpu_threads); None: unchanged
    eval_threads: int | None = 1
    progress: bool = True


def _say(message: str) -> None:
    print(f"[unicl demo] {message}", flush=True)


def run_finished(run_dir: Path, steps: int) -> bool:
    """Did a training run in `run_dir` finish its `steps` (run.json written by the trainer)?"""
    path = run_dir / "run.json"
    if not path.is_file():
        return False
    info = json.loads(path.read_text())
    return info.get("status") == "finished" and info.get("step") == steps


def _clear_run(run_dir: Path) -> None:
    """Remove a previous run for --retrain: only what `unicl train` and the demo wrote."""
    clear_own(run_dir, "run", "--retrain --run")


def run_demo(opts: DemoOptions | None = None) -> Path:
    """Everything `unicl demo` does (see the module docstring); returns the results folder."""
    import torch

    opts = opts or DemoOptions()
    overrides = list(opts.overrides)
    if opts.run is not None:
        overrides.append(f"train.run_dir={opts.run}")
    cfg = load_config(opts.config, overrides)
    run_dir = run_dir_of(cfg)
    shipped = shipped_model(cfg.name, opts)
    default_out = Path("results") / cfg.name
    if shipped is None and opts.retrain and shipped_model(cfg.name, DemoOptions()) is not None:
        default_out = Path("results") / f"{cfg.name}-retrained"  # beside the shipped model's
    out = Path(opts.out) if opts.out else default_out
    torch.set_flush_denormal(True)
    started = time.perf_counter()

    require_own(out, "results", "--out")  # before any work, so a wrong --out costs nothing
    _say(f"1/4 shapes world in {cfg.data.root}")
    ensure_world(cfg.data, progress=opts.progress)
    if shipped is not None:
        return _evaluate_shipped(shipped, out, cfg.name, opts, started)
    if opts.retrain:
        _clear_run(run_dir)
    if run_finished(run_dir, cfg.train.steps):
        _say(f"2/4 reusing the finished run {run_dir} ({cfg.train.steps} steps)")
    else:
        _say(f"2/4 training {cfg.name} for {cfg.train.steps} steps into {run_dir}")
        train(cfg, progress=opts.progress)

    import unicl

    model = unicl.load(run_dir)
    _say("3/4 evaluating on the fixed evaluation episodes")
    with cpu_threads(opts.eval_threads if model.device.type == "cpu" else None):
        return _evaluate_and_write(model, run_dir, out, cfg.name, opts, started)


def shipped_model(name: str, opts: DemoOptions) -> str | None:
    """`builtin:<name>` when this install ships a trained model for the config `name` and the
    user asked for the plain demo (no --retrain, no --run, no overrides but data.*)."""
    builtin = name.replace("-", "_")
    # overrides of data.* only move or resize the world the model is evaluated on
    other = [o for o in opts.overrides if not str(o).startswith("data.")]
    plain = not (opts.retrain or opts.run or other)
    return f"builtin:{builtin}" if plain and builtin in builtin_models() else None


def _evaluate_shipped(shipped: str, out: Path, name: str, opts, started: float) -> Path:
    """Steps 2-4 for the shipped model: its evaluation files live in the results folder."""
    import unicl

    _say(f"2/4 using the shipped model {shipped} (`unicl demo --retrain` trains one)")
    model = unicl.load(shipped)
    claim(out, "results", "--out")
    _say("3/4 evaluating on the fixed evaluation episodes")
    with cpu_threads(opts.eval_threads if model.device.type == "cpu" else None):
        return _evaluate_and_write(model, out, out, name, opts, started, model.predictor.model_dir)


def _evaluate_and_write(
    model, run_dir: Path, out: Path, name: str, opts, started: float, log_dir: Path | None = None
) -> Path:
    """Evaluate (tables kept under `run_dir`) and write the results folder `out`; the loss
    curves come from the training log in `log_dir` (default: the run)."""
    tables = {
        task: evaluate_or_reuse(model, run_dir, task, opts)
        for task in ("segmentation", "captioning")
        if task in model.predictor.tasks
    }
    _say(f"4/4 writing {out}")
    claim(out, "results", "--out")
    write_metrics(tables, out, name)
    if "segmentation" in tables:
        rows = grid_rows(model, _episodes_dir(run_dir, opts), max(opts.shots))
        render_grid(rows, out / "grid.png")
    if "captioning" in tables:
        shots = min(max(opts.shots), 1)
        write_captions(model, _episodes_dir(run_dir, opts), shots, out, opts.max_tokens)
    write_loss_curves(log_dir or run_dir, out / "loss.png")
    minutes = (time.perf_counter() - started) / 60
    _say(f"done in {minutes:.1f} min. Results in {out}/:")
    for file in ("grid.png", "captions.md", "metrics.md", "metrics.json", "loss.png"):
        if (out / file).exists():
            _say(f"  {out / file}")
    return out


def _eval_options(opts: DemoOptions):
    return EvalOptions(
        shots=list(opts.shots),
        queries_per_category=opts.queries_per_category,
        max_tokens=opts.max_tokens,
    )


def _episodes_dir(run_dir: Path, opts: DemoOptions) -> Path:
    return episode_dir(run_dir / "episodes", _eval_options(opts))


def evaluate_or_reuse(model: Any, run_dir: Path, task: str, opts: DemoOptions):
    """The run's evaluation table for `task`: read back if made with these options from the
    same checkpoint (export), else made again."""
    eval_opts = _eval_options(opts)
    path = run_dir / "eval" / f"eval_{task}.json"
    if path.is_file():
        table = load_table(path)
        weights = model.predictor.model_id
        same_model = weights is not None and table.meta.get("weights") == weights
        if same_model and table.meta.get("options") == options_dict(eval_opts):
            _say(f"    reusing {path}")
            return table
    episodes = ensure_episode_files(
        model.predictor, _episodes_dir(run_dir, opts), eval_opts, progress=opts.progress
    )
    table = evaluate(model, task, episodes, eval_opts, run=str(run_dir), progress=opts.progress)
    table.save(run_dir / "eval")
    return table


def write_metrics(tables: dict[str, Any], out: Path, name: str) -> None:
    """metrics.md (both tables) and metrics.json."""
    lines = [f"# {name}: evaluation on the fixed episodes\n"]
    for task, table in tables.items():
        lines.append(f"## {task}\n\n{table.to_markdown()}")
    lines.append(
        "mIoU, BLEU-4, METEOR, CIDEr and mAP in %; MAE as a fraction of pixels. "
        "See docs/evaluation.md for the protocol.\n"
    )
    (out / "metrics.md").write_text("\n".join(lines))
    (out / "metrics.json").write_text(
        json.dumps({task: t.to_json() for task, t in tables.items()}, indent=2)
    )


def _pick(episodes: list, groups: dict[str, int]) -> list:
    """The first episode of each category, up to groups[group] categories per group."""
    chosen, seen_categories = [], set()
    counts = dict.fromkeys(groups, 0)
    for episode in episodes:
        group = episode.meta.get("group", "seen")
        if episode.category in seen_categories or counts.get(group, 0) >= groups.get(group, 0):
            continue
        seen_categories.add(episode.category)
        counts[group] += 1
        chosen.append(episode)
    return chosen


def _load_group_episodes(model: Any, episodes_dir: Path, task: str, shots: int) -> list:
    predictor = model.predictor
    out = []
    for path in sorted(episodes_dir.glob(f"{task}_*.json")):
        out.extend(load_episodes(path, predictor.tasks[task], predictor.cfg.data, shots))
    return out


def grid_rows(model: Any, episodes_dir: Path, shots: int) -> list[GridRow]:
    """Predictions for one episode of several seen and unseen categories."""
    episodes = _load_group_episodes(model, episodes_dir, "segmentation", shots)
    chosen = _pick(episodes, {"seen": GRID_SEEN, "unseen": GRID_UNSEEN})
    answers = model.predictor.answer(chosen, model.predictor.sampling({}))
    rows = []
    for episode, answer in zip(chosen, answers):
        record = episode.meta["query_record"]
        truth = record.load_mask()
        demos = []
        for pair in episode.demos:
            # demo pairs hold the view's pixels: (S, S, 3) image, (S, S) mask
            demos.append((np.asarray(pair[0].payload), np.asarray(pair[1].payload, bool)))
        rows.append(
            GridRow(
                category=episode.category,
                unseen=episode.meta.get("group") == "unseen",
                demos=demos,
                query=record.load_image(),
                prediction=answer.value.mask,
                truth=truth,
                iou=binary_iou(answer.value.mask, truth),
            )
        )
    return rows


def write_captions(
    model: Any, episodes_dir: Path, shots: int, out: Path, max_tokens: int | None = None
) -> Path:
    """captions.md: generated region captions next to their references."""
    episodes = _load_group_episodes(model, episodes_dir, "captioning", shots)
    per_group = CAPTION_SAMPLES // 2
    chosen = _pick(episodes, {"seen": per_group, "unseen": CAPTION_SAMPLES - per_group})
    options = model.predictor.sampling({"max_tokens": max_tokens})
    answers = model.predictor.answer(chosen, options)
    lines = [
        f"# Region captions ({shots}-shot, one query per category)\n",
        "| category | split | box (x0, y0, x1, y1) | reference | generated |",
        "|---|---|---|---|---|",
    ]
    for episode, answer in zip(chosen, answers):
        record = episode.meta["query_record"]
        box = ", ".join(f"{v:.0f}" for v in record.box)
        group = episode.meta.get("group", "")
        cells = [episode.category, group, box, record.phrase, answer.value.text]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    path = out / "captions.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_loss_curves(run_dir: Path, path: Path) -> Path | None:
    """The run's loss curves (from its metrics.jsonl) as a PNG."""
    records = read_metrics(run_dir / METRICS)
    if not records:
        return None
    return plot_curves(records, path, title=f"training of {run_dir.name}")
