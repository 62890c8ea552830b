"""Benchmark the decoder: training step, KV-cached generation, shared-prefix batching, peak memory.

    python tools/bench_model.py                      # everything, CPU
    python tools/bench_model.py --only train gen     # a subset
    python tools/bench_model.py --device cuda        # GPU rows (bf16 autocast for training)

Rows (medians of --repeats timed runs after one warm-up; ratios against a baseline of the same run):
  train   forward+backward tokens/s of the tiny config (4 x 524-token sequences) and the paper
          config (1 x 2060 tokens), loss on half of the tokens, as in packed episodes.
  gen     greedy generation tokens/s after a --context token prompt, with and without the KV
          cache (the uncached path recomputes the whole sequence every step).
  prefix  16 queries sharing one demonstration prefix: generate(prefix=...) (prefix prefilled
          once) against the same 16 full prompts in one batch.
  moe     the MoE layer's dispatch (unicl.moe.ops.expert_ffn, dropless, balanced top-2 routing)
          against a dense FFN of equal active FLOPs (hidden k * d_ff) and deepspeed.moe.layer.MoE
          (its own gate, capacity factor 1.0), forward+backward, the three interleaved run by run
          so that a shared machine's load hits them alike (tools/bench_moe.py has more rows);
          vs_dense is the ratio of medians, vs_dense_paired the median of per-repeat ratios.
  memory  peak memory of one forward+backward of the paper config at 2060 tokens (CPU: growth
          of the process's peak RSS, measured in a fresh subprocess; CUDA: max_memory_allocated).
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import statistics
import time

import torch

from unicl.generate import Prompt, SegmentSpec, generate
from unicl.loss import compute_loss
from unicl.model import ModelConfig, build_model
from unicl.training.run import retain_freed_memory

VOCAB = 52352  # the paper's 52295 ids padded to a multiple of 64
ATTRIBUTES = 24


class Batch:
    def __init__(self, b: int, t: int, device, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(0, VOCAB - 64, (b, t), generator=g).to(device)
        self.attributes = torch.randint(0, ATTRIBUTES, (b, t), generator=g).to(device)
        self.positions = torch.arange(t).expand(b, t).contiguous().to(device)
        self.loss_weights = (torch.rand(b, t, generator=g) < 0.5).float().to(device)
        self.attention_mask = torch.ones(b, t, dtype=torch.bool, device=device)
        self.task = "bench"


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_s(fn, repeats: int, device) -> float:
    fn()  # warm-up
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def config(name: str, **kw) -> ModelConfig:
    return ModelConfig.paper(**kw) if name == "paper" else ModelConfig(**kw)


def train_flops(cfg: ModelConfig, b: int, t: int, loss_tokens: float) -> float:
    """Matmul FLOPs of one forward+backward (PaLM's count: 6 x active weights per token, plus
    12 x layers x width x T per token for attention, without discounting the causal half; the
    tied head only on loss rows, as compute_loss does). Routers and LayerNorms are left out."""
    d, f = cfg.d_model, cfg.d_ff
    moe = set(cfg.moe_layer_indices()) if cfg.router != "dense" else set()
    per_token = 0.0
    for layer in range(cfg.n_layer):
        ffn = (cfg.top_k if layer in moe else 1) * 2 * d * f
        per_token += 6 * (4 * d * d + ffn) + 12 * d * t
    return b * t * per_token + 6 * d * VOCAB * loss_tokens


def bench_train(args) -> list[dict]:
    rows = []
    gpu = args.device.startswith("cuda")
    # on a GPU, a batch of 8 paper sequences too: one 2060-token sequence does not fill it
    shapes = [("tiny", 4, 524, "auto"), ("paper", 1, 2060, "auto")]
    if gpu:  # the MoE backends compared end to end on a batch that fills the GPU
        shapes += [("paper", 8, 2060, backend) for backend in ("auto", "triton", "reference")]
    for name, b, t, backend in shapes:
        cfg = config(name, max_positions=max(2060, t), moe_backend=backend)
        torch.manual_seed(0)
        model = build_model(cfg, VOCAB, ATTRIBUTES).to(args.device).train()
        batch = Batch(b, t, args.device)
        amp = "cuda" if args.device == "cuda" else None
        step = functools.partial(_train_step, model, batch, amp)
        reps = args.repeats if name == "tiny" else max(2, args.repeats // 2)
        sec = median_s(step, reps, args.device)
        rows.append(
            {
                "bench": "train",
                "config": name,
                "params_M": round(model.num_parameters() / 1e6, 1),
                "batch": f"{b} x {t}",
                "moe_backend": backend,
                "step_s": round(sec, 3),
                "tokens_per_s": round(b * t / sec),
            }
        )
        if gpu:
            flops = train_flops(cfg, b, t, float(batch.loss_weights.sum()))
            rows[-1]["TFLOP/s"] = round(flops / sec / 1e12, 1)
            rows[-1]["MFU"] = round(flops / sec / (args.peak_tflops * 1e12), 3)
        print(rows[-1], flush=True)
    return rows


def _train_step(model, batch, amp_device) -> None:
    model.zero_grad(set_to_none=True)
    with torch.autocast(amp_device or "cpu", torch.bfloat16, enabled=amp_device is not None):
        out = compute_loss(model, batch)
    out.loss.backward()


def _prompt(n: int, start: int = 0, seed: int = 0) -> Prompt:
    g = torch.Generator().manual_seed(seed)
    return Prompt(
        torch.randint(0, VOCAB - 64, (n,), generator=g),
        torch.randint(0, ATTRIBUTES, (n,), generator=g),
        torch.arange(start, start + n),
    )


def bench_gen(args) -> list[dict]:
    rows = []
    allowed = torch.zeros(VOCAB, dtype=torch.bool)
    allowed[50257:51281] = True  # the VQ-GAN code span
    table = torch.arange(VOCAB) % ATTRIBUTES
    for name in args.gen_configs:
        cfg = config(name, max_positions=2060)
        torch.manual_seed(0)
        model = build_model(cfg, VOCAB, ATTRIBUTES).to(args.device).eval()
        q = _prompt(args.context)
        new = args.new_tokens if name == "tiny" else max(4, args.new_tokens // 8)
        segs = [SegmentSpec(allowed, length=new)]
        out = {}
        for cached in (True, False):
            sec = median_s(
                functools.partial(generate, model, q, segs, table, use_cache=cached),
                args.repeats if cached else 1,
                args.device,
            )
            out[cached] = sec
        tokens = generate(model, q, segs, table).tokens[0]
        same = torch.equal(tokens, generate(model, q, segs, table, use_cache=False).tokens[0])
        rows.append(
            {
                "bench": "gen",
                "config": name,
                "context": args.context,
                "new_tokens": new,
                "cached_tok_s": round(new / out[True], 1),
                "uncached_tok_s": round(new / out[False], 2),
                "speedup": round(out[False] / out[True], 1),
                "same_tokens": same,
            }
        )
        print(rows[-1], flush=True)
    return rows


def bench_prefix(args) -> list[dict]:
    cfg = config("tiny", max_positions=2060)
    torch.manual_seed(0)
    model = build_model(cfg, VOCAB, ATTRIBUTES).to(args.device).eval()
    allowed = torch.zeros(VOCAB, dtype=torch.bool)
    allowed[50257:51281] = True
    table = torch.arange(VOCAB) % ATTRIBUTES
    pre_len, q_len, new, n_q = 3 * 131 + 4, 66, 64, 16  # 3 demonstration pairs, a query image
    prefix = _prompt(pre_len, seed=1)
    queries = [_prompt(q_len, start=pre_len, seed=10 + i) for i in range(n_q)]
    full = [Prompt(*(torch.cat([a, b]) for a, b in zip(prefix, q))) for q in queries]
    segs = [SegmentSpec(allowed, length=new)]
    shared = median_s(
        lambda: generate(model, queries, segs, table, prefix=prefix), args.repeats, args.device
    )
    batched = median_s(lambda: generate(model, full, segs, table), args.repeats, args.device)
    one_by_one = median_s(lambda: [generate(model, f, segs, table) for f in full], 1, args.device)
    a = generate(model, queries, segs, table, prefix=prefix).tokens
    b = generate(model, full, segs, table).tokens
    row = {
        "bench": "prefix",
        "queries": n_q,
        "prefix_tokens": pre_len,
        "query_tokens": q_len,
        "new_tokens": new,
        "shared_prefix_s": round(shared, 3),
        "full_prompts_batched_s": round(batched, 3),
        "one_query_at_a_time_s": round(one_by_one, 3),
        "speedup_vs_batched": round(batched / shared, 2),
        "speedup_vs_one_by_one": round(one_by_one / shared, 2),
        "same_tokens": all(torch.equal(x, y) for x, y in zip(a, b)),
    }
    print(row, flush=True)
    return [row]


def bench_moe_layer(args) -> list[dict]:
    from bench_moe import deepspeed_factory  # tools/ sibling: DeepSpeed's MoE on this device

    build_ds = deepspeed_factory(args.device)
    rows = []
    for t in args.moe_tokens:
        rows += _moe_rows(args, t, build_ds)
    return rows


def _moe_rows(args, t: int, build_ds) -> list[dict]:
    import torch.nn.functional as F

    from unicl.moe.ops import expert_ffn

    d, f, e, k = 256, 1024, 8, 2
    g = torch.Generator().manual_seed(t)
    dev = args.device
    x = torch.randn(t, d, device=dev, requires_grad=True)
    dense1, dense2 = torch.nn.Linear(d, k * f).to(dev), torch.nn.Linear(k * f, d).to(dev)
    w1 = (torch.randn(e, d, f, generator=g) / d**0.5).to(dev).requires_grad_()
    b1 = torch.zeros(e, f, device=dev, requires_grad=True)
    w2 = (torch.randn(e, f, d, generator=g) / f**0.5).to(dev).requires_grad_()
    b2 = torch.zeros(e, d, device=dev, requires_grad=True)
    ids = torch.rand(t, e, generator=g).topk(k, 1).indices.to(dev)  # balanced top-2
    gates = torch.softmax(torch.randn(t, k, generator=g), -1).to(dev).requires_grad_()
    ds_layer = build_ds(d, f, e, k, args.device, torch.float32)
    x3 = x.detach().view(1, t, d).requires_grad_()
    grad = torch.randn(t, d, generator=g).to(dev)
    cases = {
        "dense FFN (k*d_ff)": lambda: dense2(F.gelu(dense1(x))).backward(grad),
        "unicl.moe.ops": lambda: expert_ffn(x, ids, gates, w1, b1, w2, b2).backward(grad),
        "DeepSpeed MoE": lambda: ds_layer(x3)[0].view(t, d).backward(grad),
    }
    times = {name: [] for name in cases}
    for fn in cases.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            sync(dev)
            times[name].append(time.perf_counter() - start)
    dense_times = times["dense FFN (k*d_ff)"]
    dense = statistics.median(dense_times)
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append(
            {
                "bench": "moe",
                "T": t,
                "threads": torch.get_num_threads(),
                "malloc": args.malloc,
                "path": name,
                "fwd_bwd_ms": round(med * 1e3, 1),
                "vs_dense": round(med / dense, 3),
                # median over repeats of this repeat's time / the dense FFN's time in it
                "vs_dense_paired": round(
                    statistics.median(a / b for a, b in zip(ts, dense_times)), 3
                ),
            }
        )
        print(rows[-1], flush=True)
    return rows


def _peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, it does not survive exec from a parent)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # KiB
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _memory_child(device: str, queue) -> None:
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    model = build_model(ModelConfig.paper(), VOCAB, ATTRIBUTES).to(device).train()
    batch = Batch(1, 2060, device)
    # the growth covers activations, gradients and temporaries of one forward+backward
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = _peak_rss_mib()
    _train_step(model, batch, "cuda" if device == "cuda" else None)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _peak_rss_mib()
    params = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    queue.put({"params_mib": round(params), "before_mib": round(base), "peak_mib": round(peak)})


def bench_memory(args) -> list[dict]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_child, args=(args.device, queue))
    proc.start()
    result = queue.get()
    proc.join()
    row = {
        "bench": "memory",
        "config": "paper",
        "tokens": 2060,
        "measure": "peak RSS" if args.device == "cpu" else "max_memory_allocated",
        **result,
        "step_growth_mib": result["peak_mib"] - result["before_mib"],
    }
    print(row, flush=True)
    return [row]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--only", nargs="+", choices=("train", "gen", "prefix", "moe", "memory"))
    p.add_argument("--moe-tokens", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--context", type=int, default=1536, help="prompt tokens for the gen rows")
    p.add_argument("--new-tokens", type=int, default=64, help="generated tokens (tiny gen row)")
    p.add_argument("--gen-configs", nargs="+", default=["tiny"], choices=("tiny", "paper"))
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    p.add_argument(
        "--peak-tflops", type=float, default=989.0,
        help="the GPU's dense bf16 peak for MFU (default: H100 SXM's 989)",
    )  # fmt: skip
    p.add_argument(
        "--malloc", choices=("default", "retain"), default="default",
        help="retain: glibc malloc keeps freed memory (no page faults on reuse; Linux/glibc only)",
    )  # fmt: skip
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.malloc == "retain" and not retain_freed_memory():
        raise SystemExit("--malloc retain needs glibc (Linux)")
    torch.set_flush_denormal(True)
    benches = {
        "train": bench_train,
        "gen": bench_gen,
        "prefix": bench_prefix,
        "moe": bench_moe_layer,
        "memory": bench_memory,
    }
    rows = []
    for name in args.only or list(benches):
        rows += benches[name](args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
