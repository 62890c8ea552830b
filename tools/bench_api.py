"""Inference speed of the public API: queries/s at 0-3 shots, and shared-demo batching.

    python tools/bench_api.py                      # tiny default (shapes_tiny), CPU
    python tools/bench_api.py --paper --device cuda   # paper config (random weights), GPU
    python tools/bench_api.py --paper --device cuda --dtype bfloat16 \
        --override tasks.segmentation.mask_decoding=parallel   # its masks in one pass

The model has random weights (speed does not depend on them) and a freshly
initialised VQ-GAN of the config's shape; segmentation prompts are timed end to
end through `InContextModel.segment` (input checks, crops, VQ-GAN encoding,
generation of the mask codes, decoding, uncropping). Reported: median seconds
per query over `--repeats` rounds of `--queries` single-query calls, per shot
count, next to the paper's 2.8 / 2.4 / 1.9 / 1.4 queries/s (0-3 shots, GPU,
M2oEGPT at 256 px); and the speed-up of one 16-query call sharing its
demonstrations over 16 separate calls.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PAPER_QPS = {0: 2.8, 1: 2.4, 2: 1.9, 3: 1.4}


def build(paper: bool, out: Path, device: str, dtype: str | None, overrides=()):
    import unicl
    from unicl.config import load_config
    from unicl.model import build_decoder
    from unicl.model_files import save_model
    from unicl.tokenizers.vqgan_model import VQGANConfig
    from unicl.vocab import Vocabulary

    if paper:
        cfg = load_config("m2oegpt_coco", list(overrides))
        vq = VQGANConfig.paper().to_dict()
    else:
        cfg = load_config("shapes_tiny", list(overrides))
        vq = VQGANConfig().to_dict()  # the defaults are vqgan_tiny's shape
    cfg.tokenizers = [  # the config's tokenizers, with a fresh VQ-GAN of its shape
        {"name": "vqgan", "checkpoint": None, "config": vq} if s["name"] == "vqgan" else s
        for s in cfg.tokenizers
    ]
    torch.manual_seed(0)
    vocab = Vocabulary.from_config(cfg)
    model = build_decoder(cfg.model, vocab, cfg.tasks)
    save_model(cfg, model, vocab, out)
    return unicl.load(out, device=device, dtype=dtype), cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paper", action="store_true", help="the paper's config (m2oegpt_coco)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="e.g. bfloat16 on GPU")
    parser.add_argument("--queries", type=int, default=4, help="single-query calls per round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (the median is reported)")
    parser.add_argument("--batch", type=int, default=16, help="queries of the shared-demo batch")
    parser.add_argument("--batch-shots", type=int, default=1, help="shots of the batch test")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--override", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cpu":
        torch.set_flush_denormal(True)

    with tempfile.TemporaryDirectory() as tmp:
        model, cfg = build(args.paper, Path(tmp) / "model", args.device, args.dtype, args.override)
    print(f"model: {model!r}; {torch.get_num_threads()} threads")
    rng = np.random.default_rng(0)
    side = 480 if args.paper else 128  # COCO-like / shapes-world image sizes

    def image():
        return rng.integers(0, 256, (side, side, 3), dtype=np.uint8)

    def mask():
        m = np.zeros((side, side), bool)
        m[side // 4 : side // 2, side // 3 : 2 * side // 3] = True
        return m

    demos = [(image(), mask()) for _ in range(3)]
    queries = [image() for _ in range(max(args.queries, args.batch))]

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def category(k: int) -> str | None:
        # the paper's 2060 positions hold exactly 4 image/mask pairs of 515 tokens: no room for
        # the category text beside demonstrations, so the paper config names it at 0 shots only
        return "star" if not args.paper or k == 0 else None

    model.segment(queries[0], demos[:1], category=category(1))  # warm-up
    print("| shots | s/query (median) | queries/s | paper queries/s (GPU) |")
    print("|---|---|---|---|")
    for k in range(4):
        rounds = []
        for _ in range(args.repeats):
            sync()
            t0 = time.perf_counter()
            for q in queries[: args.queries]:
                model.segment(q, demos[:k], category=category(k))
            sync()
            rounds.append((time.perf_counter() - t0) / args.queries)
        med = statistics.median(rounds)
        print(f"| {k} | {med:.3f} | {1 / med:.2f} | {PAPER_QPS[k]} |")

    k = args.batch_shots
    batch = queries[: args.batch]
    separate, shared = [], []
    for _ in range(args.repeats):
        sync()
        t0 = time.perf_counter()
        for q in batch:
            model.segment(q, demos[:k], category=category(k))
        sync()
        separate.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        model.segment(batch, demos[:k], category=category(k))
        sync()
        shared.append(time.perf_counter() - t0)
    sep, sh = statistics.median(separate), statistics.median(shared)
    print(
        f"\n{args.batch} queries, {k}-shot: separate calls {sep:.2f} s, one shared-demo batch "
        f"{sh:.2f} s: speed-up x{sep / sh:.2f} ({args.batch / sh:.2f} queries/s)"
    )


if __name__ == "__main__":
    main()
