"""Benchmark `unicl train` steps: tokens/s of the full DeepSpeed step against a plain loop.

    python tools/bench_train.py shapes_tiny [key=value ...] --steps 10
    python tools/bench_train.py m2oegpt_coco <overrides for local data> --steps 2

Rows (medians over --steps timed steps after one warm-up step):
  unicl    Trainer.train_step: sampling, collation, forward/backward of every micro-batch,
           statistics all-reduce, clipping, task-balanced AdamW, lr schedule (DeepSpeed engine)
  plain    the same batches through a bare PyTorch loop (compute_loss, backward,
           clip_grad_norm_, torch AdamW): the baseline, so the ratio is the engine's overhead
tokens/s counts non-padding tokens of the global batch.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from unicl.config import load_config
from unicl.loss import compute_loss
from unicl.training.run import build_trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    cfg = load_config(args.config, [*args.overrides, "train.tensorboard=false"])
    trainer = build_trainer(cfg, progress=False)
    trainer.setup()
    baseline_model = copy.deepcopy(trainer.engine.module)
    baseline_opt = torch.optim.AdamW(baseline_model.parameters(), lr=cfg.train.lr)

    ours, tokens, plans = [], [], []
    for step in range(args.steps + 1):
        start = time.perf_counter()
        stats = trainer.train_step(step)
        if step:  # the first step is a warm-up
            ours.append(time.perf_counter() - start)
            tokens.append(stats.seq_tokens)
        plans.append(stats.task)
    # the plain loop replays the same tasks' first batches (the cost is per token)
    sampler = copy.deepcopy(trainer.sampler)
    sampler.cursors = {name: 0 for name in sampler.tasks}
    plain = []
    for step in range(args.steps + 1):
        batches = [trainer.collate(m) for m in sampler.next(step).micro_batches]
        start = time.perf_counter()
        for batch in batches:
            out = compute_loss(baseline_model, batch)
            (out.loss / len(batches)).backward()
        torch.nn.utils.clip_grad_norm_(baseline_model.parameters(), cfg.train.grad_clip)
        baseline_opt.step()
        baseline_opt.zero_grad(set_to_none=True)
        if step:
            plain.append(time.perf_counter() - start)
    tok = statistics.median(tokens)
    t_ours, t_plain = statistics.median(ours), statistics.median(plain)
    print(f"config {args.config} {' '.join(args.overrides)}")
    print(f"global batch {cfg.train.batch_size}, median {tok:.0f} tokens/step, tasks {plans[1:]}")
    print(f"unicl  step {t_ours:.3f} s  {tok / t_ours:8.0f} tokens/s")
    print(f"plain  step {t_plain:.3f} s  {tok / t_plain:8.0f} tokens/s")
    print(f"ratio unicl/plain time: {t_ours / t_plain:.3f}")


if __name__ == "__main__":
    main()
