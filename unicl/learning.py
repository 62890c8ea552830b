"""Learnability benchmark: train named variants of a config for one budget, score them the same way.

`tools/bench_learning.py` is the command; this module holds the variants (the levers of
docs/model.md, "Making the model look at the image") and the diagnostics that say *why* a
variant does or does not segment:

- the mask tokenizer's ceiling: mask -> codes -> mask IoU on the query views;
- teacher-forced IoU (every mask code predicted from the true codes before it) next to the
  free-running IoU that generation gives: a large gap is the autoregressive shortcut;
- mask-token cross-entropy on background, foreground and boundary patches;
- image dependence: the answer again with the query image's codes shuffled; a model that looks
  at the image loses most of its IoU;
- demonstration dependence: the answer again with the demonstrations of another category's
  episode; a model that learns the category in context loses IoU, one that segments whatever
  is salient does not.

Every variant trains from scratch on the same world with the same seed and budget, and is
evaluated on the same fixed held-out episodes (object-centred and whole-image queries).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unicl.batch import collate
from unicl.config import deep_merge, load_config
from unicl.demo import run_finished
from unicl.evaluate import EvalOptions, ensure_episode_files, evaluate, other_category_demos
from unicl.tasks.episodes import GROUPS, episode_file_name, load_episodes
from unicl.tasks.metrics import binary_iou
from unicl.tasks.prompt import Segment
from unicl.training.run import train

#: the paper's choices on the tiny model (what configs/shapes_tiny.yaml held before the levers):
#: masks coded by the shared VQ-GAN and generated code by code, sequence positions, no extra
#: embeddings, real category names only; every variant starts from it
_PAPER = {
    "tokenizers": [
        {"name": "gpt2"},
        {"name": "vqgan", "checkpoint": "builtin:vqgan_shapes_tiny"},
        {"name": "bins"},
    ],
    "tasks": {
        "segmentation": {
            "mask_tokenizer": "",
            "mask_decoding": "autoregressive",
            "aligned_positions": False,
            "mask_readout": "soft",
            "mask_threshold": 0.5,
        },
        "captioning": {"rename_prob": 0.0},
    },
    "model": {
        "attribute_embedding": False,
        "code_features": False,
        "copy_head": False,
        "copy_continue": False,
        "max_positions": 544,
    },
    "train": {"closed_loss_spans": ["vqgan"], "lr": 1.0e-3},
}
#: the tokenizers of a config that codes masks with "maskbits" (tiny world: 8 x 8 grid, 2 x 2 bits)
_MASKBITS_TOKENIZERS = [
    {"name": "gpt2"},
    {"name": "vqgan", "checkpoint": "builtin:vqgan_shapes_tiny"},
    {"name": "bins"},
    {"name": "maskbits", "grid": 8, "cells": 2, "size": 64},
]
_MASKBITS = {
    "tokenizers": _MASKBITS_TOKENIZERS,
    "tasks": {"segmentation": {"mask_tokenizer": "maskbits"}},
    "train": {"closed_loss_spans": ["vqgan", "maskbits"]},
}
# a parallel pair is [BOI] image [BOI] placeholders [BOI] mask [EOC]: 4 x 196 tokens at 64 codes,
# which need 800 positions unless the mask spans share their image's positions (aligned)
_PARALLEL = {
    "tasks": {"segmentation": {"mask_decoding": "parallel"}},
    "model": {"attribute_embedding": True, "max_positions": 800},
}
_ALIGNED = {"tasks": {"segmentation": {"aligned_positions": True}}}
_ATTRIBUTE = {"model": {"attribute_embedding": True}}
_FEATURES = {"model": {"code_features": True}}
_RENAME = {"tasks": {"captioning": {"rename_prob": 0.5}}}
_LR3 = {"train": {"lr": 3.0e-3}}
_EXPECTED_IOU = {"tasks": {"segmentation": {"mask_threshold": "expected_iou"}}}
_COPY = {"model": {"copy_head": True}}
_OBJECT_CROPS = {"tasks": {"segmentation": {"full_view_prob": 0.0}}}
_CATEGORY_TEXT = {"tasks": {"segmentation": {"category_text": True}}}
_NO_REGION = {"tasks": {"captioning": {"region_tokens": 0}}}


def _merge(*parts: dict) -> dict:
    out: dict = {}
    for part in parts:
        out = deep_merge(out, part)
    return out


def _lever(*parts: dict) -> dict:
    return _merge(_PAPER, *parts)


_ALL = (_MASKBITS, _PARALLEL, _ALIGNED, _FEATURES)

#: name -> (what it changes, config overlay over the config). Every lever starts from "paper";
#: "default" is the config as it is (configs/shapes_tiny.yaml: the winning combination).
VARIANTS: dict[str, tuple[str, dict]] = {
    "default": ("the config as shipped", {}),
    "paper": ("VQ-GAN mask codes, autoregressive, sequence positions", _PAPER),
    "maskbits": ("maskbits mask codes (16), autoregressive", _lever(_MASKBITS)),
    "aligned": ("mask (r, c) shares image (r, c)'s position", _lever(_ALIGNED)),
    "attr-emb": ("attribute embedding added to the input", _lever(_ATTRIBUTE)),
    "code-features": ("codebook features of image codes in the input", _lever(_FEATURES)),
    "parallel": ("parallel mask answer (VQ-GAN codes, argmax)", _lever(_PARALLEL)),
    "lr3e-3": ("learning rate 3e-3 instead of 1e-3", _lever(_LR3)),
    "rename": ("captions: made-up category names in half the episodes", _lever(_RENAME)),
    "expected-iou": ("masks cut where their expected IoU is largest", _lever(_EXPECTED_IOU)),
    "copy-head": ("a copy head over the prompt's text tokens", _lever(_COPY)),
    "default+object-crops": (
        "the config as shipped; every training view an object-centred crop (no whole images)",
        _OBJECT_CROPS,
    ),
    "default+category-text": (
        "the config as shipped; every segmentation prompt names its category",
        _CATEGORY_TEXT,
    ),
    "default+no-region-tokens": (
        "the config as shipped; captions without the region's codes after their box",
        _NO_REGION,
    ),
    "maskbits+parallel": (
        "maskbits codes, parallel answer, soft readout",
        _lever(_MASKBITS, _PARALLEL),
    ),
    "maskbits+parallel+argmax": (
        "maskbits, parallel, argmax readout",
        _lever(_MASKBITS, _PARALLEL, {"tasks": {"segmentation": {"mask_readout": "argmax"}}}),
    ),
    "all": ("maskbits, parallel (soft), aligned positions", _lever(_MASKBITS, _PARALLEL, _ALIGNED)),
    "all+code-features": (
        "maskbits, parallel (soft), aligned positions, code features",
        _lever(*_ALL),
    ),
    "all+code-features+lr3e-3": ("the above with learning rate 3e-3", _lever(*_ALL, _LR3)),
    "all+code-features+lr3e-3+rename": (
        "the above with made-up category names in half the caption episodes",
        _lever(*_ALL, _LR3, _RENAME),
    ),
}


def variant_overrides(name: str) -> list[str]:
    """`key=value` config overrides of a named variant (ValueError listing the valid names)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; valid variants: {', '.join(VARIANTS)}")
    out: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and not (prefix == "tokenizers"):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else key, sub)
        else:
            out.append(f"{prefix}={json.dumps(value)}")  # JSON is YAML, as overrides are read

    walk("", VARIANTS[name][1])
    return out


# --------------------------------------------------------------------------- #
# diagnostics
# --------------------------------------------------------------------------- #


def _patch_classes(mask: np.ndarray, grid: int) -> np.ndarray:
    """(S, S) bool -> (grid*grid,) 0 background, 1 foreground, 2 boundary patch."""
    s = mask.shape[0] // grid
    frac = mask[: grid * s, : grid * s].reshape(grid, s, grid, s).mean(axis=(1, 3)).reshape(-1)
    return np.where(frac == 0, 0, np.where(frac == 1, 1, 2))


@torch.no_grad()
def diagnostics(predictor: Any, episodes: Sequence[Any]) -> dict[str, float]:
    """Ceiling, teacher-forced IoU, CE split by patch class and image dependence (view space).

    `episodes`: segmentation episodes whose query pair holds the true mask (evaluation files).
    """
    task = predictor.tasks["segmentation"]
    vocab, model = predictor.vocab, predictor.model
    tok = vocab.tokenizers[task.mask_tokenizer]
    span = vocab.ranges[task.mask_tokenizer]
    head = model.head_weight[span.start : span.stop]  # (K, D)
    grid = int(round(np.sqrt(tok.codes_per_image)))
    ceiling, forced, ce = [], [], {0: [], 1: [], 2: []}
    for episode in episodes:
        truth = np.asarray(episode.query[1].payload, bool)  # (S, S) the query's mask in its view
        codes = torch.as_tensor(tok.encode_mask(truth)).reshape(-1)
        ceiling.append(binary_iou(np.asarray(tok.decode_mask(codes), bool), truth))
        packed = predictor.packer.pack(episode)
        batch = collate([packed]).to(predictor.device)
        hidden = model(
            batch.input_ids, batch.attributes, batch.positions, return_hidden=True
        ).hidden
        n = codes.numel()
        # hidden state t predicts token t + 1; the query's mask codes are its last n targets
        start = packed.parallel_span[0] if packed.parallel_span else packed.prefix_length - 1
        logits = (hidden[0, start : start + n] @ head.T).float()  # (n, K)
        nll = torch.nn.functional.cross_entropy(logits, codes.to(logits.device), reduction="none")
        classes = _patch_classes(truth, grid)
        for c in (0, 1, 2):
            ce[c] += nll.cpu().numpy()[classes == c].tolist()
        # read out as the task reads an answer (mask_readout, mask_threshold), at full size
        answer = task.postprocess_distribution(episode, logits.softmax(-1).cpu().numpy(), vocab)
        forced.append(binary_iou(answer.mask, episode.meta["query_record"].load_mask()))
    image_tok = vocab.tokenizers[task.image_tokenizer]
    shuffled = [_shuffle_query_image(e, image_tok, seed=i) for i, e in enumerate(episodes)]
    plain = [a.value for a in predictor.answer(list(episodes), predictor.sampling({}))]
    mixed = [a.value for a in predictor.answer(shuffled, predictor.sampling({}))]
    truths = [e.meta["query_record"].load_mask() for e in episodes]
    return {
        "ceiling_iou": 100 * float(np.mean(ceiling)),
        "teacher_forced_iou": 100 * float(np.mean(forced)),
        "free_running_iou": _mean_iou(plain, truths),
        "shuffled_image_iou": _mean_iou(mixed, truths),
        "other_demos_iou": other_category_demos_iou(predictor, episodes),
        "ce_background": float(np.mean(ce[0])) if ce[0] else float("nan"),
        "ce_foreground": float(np.mean(ce[1])) if ce[1] else float("nan"),
        "ce_boundary": float(np.mean(ce[2])) if ce[2] else float("nan"),
        "predicted_foreground": 100 * float(np.mean([a.mask.mean() for a in plain])),
        "true_foreground": 100 * float(np.mean([t.mean() for t in truths])),
    }


def _shuffle_query_image(episode: Any, tokenizer: Any, seed: int) -> Any:
    """The episode with its query image's codes in a random order (same codes, no layout)."""
    query = list(episode.query)
    image = query[0]
    codes = image.ids if image.ids is not None else tokenizer.encode(image.payload).numpy()
    perm = np.random.default_rng(seed).permutation(len(codes))
    query[0] = Segment(image.modality, None, image.role, image.kind, np.asarray(codes)[perm])
    return dataclasses.replace(episode, pairs=[*episode.pairs[:-1], query])


def other_category_demos_iou(predictor: Any, episodes: Sequence[Any]) -> float:
    """Mean IoU (%) of the answers given another category's demonstrations (NaN: none)."""
    swapped = other_category_demos(episodes)
    if not swapped:
        return float("nan")
    answers = predictor.answer(swapped, predictor.sampling({}))
    truths = [e.meta["query_record"].load_mask() for e in episodes]
    return _mean_iou([a.value for a in answers], truths)


def _mean_iou(answers: Sequence[Any], truths: Sequence[np.ndarray]) -> float:
    """Mean IoU (%) of mask answers against their true masks."""
    return 100 * float(np.mean([binary_iou(a.mask, t) for a, t in zip(answers, truths)]))


def _one_shot_episodes(directory: Path, task: Any, predictor: Any, seed: int) -> dict[str, list]:
    """group -> the 1-shot segmentation episodes of `directory`'s files (groups with a file)."""
    out = {}
    for group in GROUPS:
        path = directory / episode_file_name("segmentation", "val", group, seed)
        if path.is_file():
            out[group] = list(load_episodes(path, task, predictor.cfg.data, 1))
    return out


# --------------------------------------------------------------------------- #
# one variant, end to end
# --------------------------------------------------------------------------- #


@dataclasses.dataclass
class BenchOptions:
    """The fixed benchmark: one config, world, budget and set of held-out episodes."""

    config: str = "shapes_tiny"
    steps: int = 150
    world: str = "worlds/bench"
    world_seed: int = 0
    #: episode seed of the evaluation files (tune on another seed, report on this one)
    episode_seed: int = 0
    shots: tuple[int, ...] = (0, 1, 3)
    queries_per_category: int = 10
    out: str = "runs/bench"
    device: str | None = None
    progress: bool = False
    #: further `key=value` overrides applied to every variant (e.g. train.batch_size=32)
    overrides: tuple[str, ...] = ()
    #: appended to the variant's name in its run directory and results (recipe sweeps)
    tag: str = ""
    #: episodes answered together in evaluation
    eval_batch: int = 8


def _rows(table: Any) -> list[dict[str, Any]]:
    return [dataclasses.asdict(r) for r in table.rows]


def run_variant(name: str, opts: BenchOptions) -> dict[str, Any]:
    """Train variant `name` from scratch (reusing a finished run), evaluate it, diagnose it."""
    import unicl

    torch.set_flush_denormal(True)
    out = Path(opts.out)
    label = f"{name}{opts.tag}"
    run_dir = out / f"world{opts.world_seed}" / label
    overrides = [
        *variant_overrides(name),
        f"name={label}",
        f"train.steps={opts.steps}",
        f"train.run_dir={run_dir}",
        f"data.root={opts.world}",
        f"data.seed={opts.world_seed}",
        "train.plot_every=1000000",
        *opts.overrides,
    ]
    cfg = load_config(opts.config, overrides)
    started = time.perf_counter()
    if not run_finished(run_dir, cfg.train.steps):
        train(cfg, progress=opts.progress)
    train_minutes = (time.perf_counter() - started) / 60
    model = unicl.load(run_dir, device=opts.device)
    predictor = model.predictor
    result: dict[str, Any] = {
        "variant": label,
        "description": VARIANTS[name][0]
        + (f" ({', '.join(opts.overrides)})" if opts.overrides else ""),
        "overrides": overrides,
        "train_minutes": train_minutes,
        "device": str(predictor.device),
    }
    eval_opts = EvalOptions(
        shots=list(opts.shots),
        seed=opts.episode_seed,
        queries_per_category=opts.queries_per_category,
        batch_size=opts.eval_batch,
    )
    episodes_root = out / f"world{opts.world_seed}" / "episodes"
    crops = {"object": episodes_root / f"object_seed{opts.episode_seed}"}
    crops["full"] = episodes_root / f"full_seed{opts.episode_seed}"
    seg = predictor.tasks["segmentation"]
    ensure_episode_files(predictor, crops["object"], eval_opts)
    result["segmentation"] = _rows(
        evaluate(model, "segmentation", crops["object"], eval_opts, progress=opts.progress)
    )
    if "captioning" in predictor.tasks:
        cap_opts = dataclasses.replace(eval_opts, shots=[k for k in opts.shots if k <= 1])
        result["captioning"] = _rows(
            evaluate(model, "captioning", crops["object"], cap_opts, progress=opts.progress)
        )
    # whole-image queries: what a user's query through the API is shown (the full image, padded)
    before = seg.query_crop
    seg.query_crop = "full"
    try:
        full_opts = dataclasses.replace(eval_opts, shots=[1])
        ensure_episode_files(predictor, crops["full"], full_opts)
        result["whole_image"] = _rows(
            evaluate(model, "segmentation", crops["full"], full_opts, progress=opts.progress)
        )
        # the same whole-image queries, each with another category's demonstrations
        result["whole_image_other_demos"] = {
            group: other_category_demos_iou(predictor, episodes)
            for group, episodes in _one_shot_episodes(
                crops["full"], seg, predictor, opts.episode_seed
            ).items()
        }
    finally:
        seg.query_crop = before
    result["diagnostics"] = {
        group: diagnostics(predictor, episodes)
        for group, episodes in _one_shot_episodes(
            crops["object"], seg, predictor, opts.episode_seed
        ).items()
    }
    return result


def _metric(rows: list[dict], method: str, shots: int, split: str, key: str) -> float | None:
    for r in rows:
        if r["method"] == method and r["shots"] == shots and r["split"] == split:
            return r["metrics"].get(key)
    return None


def summary_table(results: Sequence[dict[str, Any]]) -> str:
    """One markdown table: a row per variant, then the baselines (1-shot unless marked)."""

    def f(v: float | None, fmt: str = "{:.1f}") -> str:
        return "" if v is None or (isinstance(v, float) and np.isnan(v)) else fmt.format(v)

    head = (
        "| variant | train min | 0-shot seen / unseen | 1-shot seen / unseen "
        "| 3-shot seen / unseen "
        "| whole image 1-shot seen / unseen (other category's demos) "
        "| teacher-forced / free / shuffled image / other category's demos (unseen) "
        "| CE bg / fg / edge (unseen) "
        "| caption shape % / colour % / CIDEr (1-shot, mean of seen and unseen) |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in results:
        seg, full = r["segmentation"], r["whole_image"]
        pair = lambda rows, k: " / ".join(
            f(_metric(rows, "model", k, s, "miou")) for s in ("seen", "unseen")
        )
        d = r["diagnostics"].get("unseen", {})
        cap = r.get("captioning", [])
        caps = []
        for key in ("shape_acc", "colour_acc", "cider"):
            vals = [_metric(cap, "model", 1, s, key) for s in ("seen", "unseen")]
            vals = [v for v in vals if v is not None]
            caps.append(f(float(np.mean(vals))) if vals else "")
        other = r.get("whole_image_other_demos", {})
        whole = pair(full, 1)
        if any(np.isfinite(other.get(s, np.nan)) for s in ("seen", "unseen")):
            whole += f" ({' / '.join(f(other.get(s)) for s in ('seen', 'unseen'))})"
        lines.append(
            f"| {r['variant']} | {r['train_minutes']:.1f} | {pair(seg, 0)} | {pair(seg, 1)} | "
            f"{pair(seg, 3)} | {whole} | "
            f"{f(d.get('teacher_forced_iou'))} / {f(d.get('free_running_iou'))} / "
            f"{f(d.get('shuffled_image_iou'))} / {f(d.get('other_demos_iou'))} | "
            f"{f(d.get('ce_background'), '{:.2f}')} / "
            f"{f(d.get('ce_foreground'), '{:.2f}')} / {f(d.get('ce_boundary'), '{:.2f}')} | "
            f"{' / '.join(caps)} |"
        )
    if results:
        seg, full = results[0]["segmentation"], results[0]["whole_image"]
        for method in ("all background", "copy demo mask"):
            cells = []
            for rows, k in ((seg, 0), (seg, 1), (seg, 3), (full, 1)):
                vals = [_metric(rows, method, k, s, "miou") for s in ("seen", "unseen")]
                cells.append(
                    " / ".join(f(v) for v in vals) if any(v is not None for v in vals) else ""
                )
            lines.append(f"| {method} | | {' | '.join(cells)} | | | |")
        lines.append(
            "\nTokenizer ceiling (mask -> codes -> mask IoU, unseen 1-shot queries): "
            + ", ".join(
                f"{r['variant']} {f(r['diagnostics'].get('unseen', {}).get('ceiling_iou'))}"
                for r in results
            )
        )
    return "\n".join(lines)


def save_results(results: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write `results` into the JSON file at `path`, replacing earlier rows of the same variant."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(path.read_text()) if path.is_file() else []
    names = {r["variant"] for r in results}
    rows = [r for r in rows if r["variant"] not in names] + list(results)
    path.write_text(json.dumps(rows, indent=1, default=float))
    return path
