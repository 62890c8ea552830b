"""Benchmark the MoE expert dispatch: Triton kernels vs the reference ops, DeepSpeed's MoE layer,
a dense FFN of equal active FLOPs and `x.clone()` (the bandwidth ceiling), all in one run.

    python tools/bench_moe.py --device cpu           # reference / dense / DeepSpeed rows
    python tools/bench_moe.py --device cuda          # everything, issue-9 sizes

Prints one markdown table (times are medians in ms; the FFN paths of one configuration run in
turn within each repeat, and vs_dense is the median over repeats of the ratio to the dense FFN
in the same repeat) and optionally writes the rows as JSON. Routings: balanced (uniform top-k), zipf
(expert i chosen with weight 1/(i+1)), all_to_one, and attribute (the attribute histogram of
shapes-tiny episodes: 4 pairs x (BOI + 64 image + BOI + 64 mask + EOC), each attribute sent to
the same k experts, as AG-MoE does).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from unicl.moe import kernels, ops
from unicl.moe.grouped import grouped_expert_ffn, grouped_mm_available
from unicl.moe.kernels import build_attribute_plan, torch_dispatch_plan

ROUTINGS = ("balanced", "zipf", "all_to_one", "attribute")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--tokens", type=int, nargs="+", help="T values (default by device)")
    p.add_argument("--d-model", type=int, help="default 256 (cpu) / 768 (cuda)")
    p.add_argument("--d-ff", type=int, help="expert hidden width, default 4 x d-model")
    p.add_argument("--experts", type=int, nargs="+", help="E values (default 8 / 8 16)")
    p.add_argument("--top-k", type=int, nargs="+", help="k values (default 2 / 1 2)")
    p.add_argument("--routings", nargs="+", choices=ROUTINGS, help="default balanced attribute")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), help="default fp32 / bf16")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per row (median)")
    p.add_argument("--no-deepspeed", action="store_true", help="skip the DeepSpeed MoE rows")
    p.add_argument(
        "--plans-only", action="store_true", help="only the copy, plan and dispatch/combine rows"
    )
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args()
    cpu = args.device == "cpu"
    args.tokens = args.tokens or ([4096, 16384] if cpu else [2048, 8192, 16384, 65536])
    args.d_model = args.d_model or (256 if cpu else 768)
    args.d_ff = args.d_ff or 4 * args.d_model
    args.experts = args.experts or ([8] if cpu else [8, 16])
    args.top_k = args.top_k or ([2] if cpu else [1, 2])
    args.routings = args.routings or (["balanced", "attribute"] if cpu else list(ROUTINGS))
    args.dtype = getattr(torch, args.dtype or ("float32" if cpu else "bfloat16"))
    return args


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved_ms(fns: dict, device: str, repeats: int) -> dict[str, list[float]]:
    """Times (ms) of every fn, run in turn within each repeat (after one warm-up call each), so
    that a shared machine's load changes hit all of them alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def median_ms(fn, device: str, repeats: int) -> float:
    """Median time (ms) of one fn after a warm-up call (compilation, allocator)."""
    return statistics.median(interleaved_ms({"fn": fn}, device, repeats)["fn"])


def peak_mib(fn, device: str) -> float | None:
    """Peak CUDA memory of one call above what was allocated before it (None on CPU)."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def episode_attributes(t: int) -> tuple[torch.Tensor, int]:
    """(T,) attribute ids of back-to-back tiny-layout episodes and the number of attributes.

    Attributes: 0 demo image, 1 demo mask, 2 query image, 3 query mask, 4 BOI, 5 EOC.
    """
    ep = []
    for pair in range(4):
        image, mask = (2, 3) if pair == 3 else (0, 1)
        ep += [4] + [image] * 64 + [4] + [mask] * 64 + [5]
    ep = torch.tensor(ep)
    return ep.repeat(t // ep.numel() + 1)[:t], 6


def make_routing(kind, t, e, k, gen):
    """(ids (T, K) int64, attribute info or None) for one routing pattern."""
    if kind == "all_to_one":
        return torch.arange(k).repeat(t, 1), None
    if kind == "attribute":
        attrs, a = episode_attributes(t)
        table = torch.rand(a, e, generator=gen).topk(k, dim=1).indices  # (A, K)
        return table[attrs], (attrs, a, table)
    scores = torch.rand(t, e, generator=gen)
    if kind == "zipf":
        scores = scores ** (torch.arange(e) + 1.0)
    return scores.topk(k, dim=1).indices, None


def bench_config(args, t, e, k, kind, deepspeed_moe) -> list[dict]:
    dev, dt, d, f = args.device, args.dtype, args.d_model, args.d_ff
    gen = torch.Generator().manual_seed(t + e + k)
    ids, attr = make_routing(kind, t, e, k, gen)
    ids = ids.to(dev)
    x = torch.randn(t, d, device=dev, dtype=dt, requires_grad=True)
    gates = torch.softmax(torch.randn(t, k, device=dev), -1).to(dt).requires_grad_()
    w1 = (torch.randn(e, d, f, device=dev) / d**0.5).to(dt).requires_grad_()
    b1 = torch.zeros(e, f, device=dev, dtype=dt, requires_grad=True)
    w2 = (torch.randn(e, f, d, device=dev) / f**0.5).to(dt).requires_grad_()
    b2 = torch.zeros(e, d, device=dev, dtype=dt, requires_grad=True)
    dense1 = torch.nn.Linear(d, k * f, device=dev, dtype=dt)  # equal active FLOPs per token
    dense2 = torch.nn.Linear(k * f, d, device=dev, dtype=dt)
    grad = torch.randn(t, d, device=dev, dtype=dt)

    def fwd_bwd(fn):
        return lambda: fn().backward(grad)

    cases = {
        "dense FFN (k*d_ff)": lambda: dense2(F.gelu(dense1(x))),
        "reference (moe.ops)": lambda: ops.expert_ffn(x, ids, gates, w1, b1, w2, b2),
    }
    if dev == "cuda" and kernels.available():
        cases["triton"] = lambda: kernels.triton_expert_ffn(x, ids, gates, w1, b1, w2, b2)
        if attr is not None:
            aplan = build_attribute_plan(attr[0].to(dev), attr[1])
            table = attr[2].to(dev)
            cases["triton + attribute plan"] = lambda: kernels.triton_expert_ffn(
                x, ids, gates, w1, b1, w2, b2, plan=kernels.remap(aplan, table, e)
            )
    if dev == "cuda" and dt == torch.bfloat16 and grouped_mm_available(dev):
        cases["grouped GEMM (torch._grouped_mm)"] = lambda: grouped_expert_ffn(
            x, ids, gates, w1, b1, w2, b2
        )
    if deepspeed_moe is not None and kind == "balanced":
        layer = deepspeed_moe(d, f, e, k, dev, dt)
        x3 = x.detach().view(1, t, d).requires_grad_()
        cases["DeepSpeed MoE (own gate)"] = lambda: layer(x3)[0].view(t, d)
    if args.plans_only:
        cases = {}
    rows = []
    base = {"T": t, "E": e, "k": k, "routing": kind, "d": d, "d_ff": f, "dtype": str(dt)[6:]}
    if cases:
        fwd = interleaved_ms(cases, dev, args.repeats)
        with torch.no_grad():
            fwd_nograd = interleaved_ms(cases, dev, args.repeats)
        both = interleaved_ms({n: fwd_bwd(fn) for n, fn in cases.items()}, dev, args.repeats)
        dense = both["dense FFN (k*d_ff)"]
    for name, fn in cases.items():
        rows.append(
            {
                **base,
                "path": name,
                "fwd_ms": statistics.median(fwd_nograd[name]),
                "fwd_train_ms": statistics.median(fwd[name]),
                "fwd_bwd_ms": statistics.median(both[name]),
                # median over repeats of (this path / the dense FFN in the same repeat)
                "vs_dense": statistics.median(a / b for a, b in zip(both[name], dense)),
                "peak_mib": peak_mib(fwd_bwd(fn), dev),
            }
        )
    rows += bandwidth_rows(args, base, x.detach(), ids, gates.detach(), attr, e)
    return rows


def bandwidth_rows(args, base, x, ids, gates, attr, e) -> list[dict]:
    """Copy ceiling, and (CUDA) dispatch + combine and plan times against it."""
    dev = args.device
    t, d = x.shape
    nbytes = x.element_size()
    copy_ms = median_ms(lambda: x.clone(), dev, args.repeats)
    copy_gbs = 2 * t * d * nbytes / copy_ms / 1e6
    rows = [{**base, "path": "x.clone() (copy ceiling)", "fwd_ms": copy_ms, "GB/s": copy_gbs}]

    def timed(path, fn):
        rows.append({**base, "path": path, "fwd_ms": median_ms(fn, dev, args.repeats)})

    # what attribute routing saves: a per-layer remap instead of sorting the T*k slots
    timed("routing plan (torch sort)", lambda: torch_dispatch_plan(ids, e))
    if attr is not None:
        aplan = build_attribute_plan(attr[0].to(dev), attr[1])
        table = attr[2].to(dev)
        timed("attribute plan: remap per layer", lambda: kernels.remap(aplan, table, e))
        attrs_dev = attr[0].to(dev)
        timed("attribute plan: build per batch", lambda: build_attribute_plan(attrs_dev, attr[1]))
    if dev == "cuda" and kernels.available():
        from unicl.moe.kernels._rows import combine, gather_rows

        plan = kernels.routing_plan(ids, e)
        kept = ids.numel()  # all slots kept in these routings
        moved = (2 * kept * d + kept * d + t * d) * nbytes  # gather r+w, combine r+w
        ms = median_ms(lambda: combine(gather_rows(x, plan), plan, ids, gates), dev, args.repeats)
        gbs = moved / ms / 1e6
        share = gbs / copy_gbs
        rows.append(
            {
                **base,
                "path": "dispatch + combine (triton)",
                "fwd_ms": ms,
                "GB/s": gbs,
                "share_of_copy": share,
            }
        )
        timed("routing plan (triton)", lambda: kernels.routing_plan(ids, e))
    return rows


def deepspeed_factory(device: str):
    """A builder of `deepspeed.moe.layer.MoE` layers after a single-process init (gloo on CPU)."""
    if device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    for key, value in (
        ("RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("LOCAL_RANK", "0"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "29533"),
    ):
        os.environ.setdefault(key, value)
    import deepspeed
    from deepspeed.moe.layer import MoE

    deepspeed.init_distributed(dist_backend="gloo" if device == "cpu" else "nccl")

    def build(d, f, e, k, dev, dt):
        expert = torch.nn.Sequential(torch.nn.Linear(d, f), torch.nn.GELU(), torch.nn.Linear(f, d))
        return MoE(hidden_size=d, expert=expert, num_experts=e, ep_size=1, k=k).to(dev, dt)

    return build


def fmt(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def main() -> int:
    args = parse_args()
    if args.device == "cpu":
        torch.set_flush_denormal(True)
    elif not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a CUDA device")
    ds = None if args.no_deepspeed or args.plans_only else deepspeed_factory(args.device)
    cols = [
        "T",
        "E",
        "k",
        "routing",
        "path",
        "fwd_ms",
        "fwd_bwd_ms",
        "vs_dense",
        "peak_mib",
        "GB/s",
        "share_of_copy",
    ]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    rows = []
    for t in args.tokens:
        for e in args.experts:
            for k in args.top_k:
                for kind in args.routings:
                    for row in bench_config(args, t, e, k, kind, ds):
                        rows.append(row)
                        print("| " + " | ".join(fmt(row.get(c)) for c in cols) + " |", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
