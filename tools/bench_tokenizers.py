"""Tokenizer throughput: VQ-GAN encode/decode images/s (tiny and paper configs), GPT-2 tokens/s.

Each measurement is the median of `--repeats` timed runs after one warm-up run.
Ratios are against baselines measured in the same run: batch size 1 for the
VQ-GAN rows, raw tiktoken for GPT-2 (our wrapper adds input checks and tensors).
The VQ-GAN's speed does not depend on its weights, so the paper-size model is
freshly initialised.

    python tools/bench_tokenizers.py --device cpu --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from unicl.tokenizers.gpt2 import GPT2Tokenizer
from unicl.tokenizers.vqgan import VQGANTokenizer
from unicl.tokenizers.vqgan_model import VQGANConfig


def median_time(fn, repeats: int, sync) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_vqgan(name, config, batches, device, repeats, sync):
    rows = []
    rng = np.random.default_rng(0)
    for batch in batches:
        tok = VQGANTokenizer(
            checkpoint=None, config=config.to_dict(), batch_size=batch, device=device
        )
        images = rng.integers(
            0, 256, (batch, config.resolution, config.resolution, 3), dtype=np.uint8
        )
        codes = tok.encode(images)
        enc = median_time(lambda t=tok, x=images: t.encode(x), repeats, sync)
        dec = median_time(lambda t=tok, c=codes: t.decode(c), repeats, sync)
        rows.append(
            {
                "config": name,
                "batch": batch,
                "encode_img_s": batch / enc,
                "decode_img_s": batch / dec,
            }
        )
    base = rows[0]
    for row in rows:
        row["encode_vs_b1"] = row["encode_img_s"] / base["encode_img_s"]
        row["decode_vs_b1"] = row["decode_img_s"] / base["decode_img_s"]
    return rows


def bench_gpt2(repeats):
    tok = GPT2Tokenizer()
    rng = np.random.default_rng(0)
    words = "a small red star above the large blue ring near two green crosses left of it".split()
    texts = [" ".join(rng.choice(words, 12)) for _ in range(2000)]
    n_tokens = sum(len(t) for t in tok.encode_batch(texts))
    ours = median_time(lambda: [tok.encode(t) for t in texts], repeats, lambda: None)
    raw = median_time(
        lambda: [tok.encoding.encode_ordinary(t) for t in texts], repeats, lambda: None
    )
    batch = median_time(lambda: tok.encode_batch(texts), repeats, lambda: None)
    return {
        "texts": len(texts), "tokens": n_tokens,
        "tiktoken_tok_s": n_tokens / raw, "encode_tok_s": n_tokens / ours,
        "encode_batch_tok_s": n_tokens / batch, "encode_vs_tiktoken": raw / ours,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tiny-batches", default="1,16,64")
    parser.add_argument("--paper-batches", default="1,8")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    tiny = VQGANConfig()  # the defaults are configs/vqgan_tiny.yaml's model
    results = {
        "device": args.device,
        "threads": torch.get_num_threads(),
        "vqgan": bench_vqgan(
            "tiny 64px f8",
            tiny,
            [int(b) for b in args.tiny_batches.split(",")],
            args.device,
            args.repeats,
            sync,
        )
        + bench_vqgan(
            "paper 256px f16",
            VQGANConfig.paper(),
            [int(b) for b in args.paper_batches.split(",")],
            args.device,
            args.repeats,
            sync,
        ),
        "gpt2": bench_gpt2(args.repeats),
    }
    head = ("config", "batch", "enc img/s", "dec img/s", "enc x b1", "dec x b1")
    print("{:<16} {:>5} {:>10} {:>10} {:>9} {:>9}".format(*head))
    for r in results["vqgan"]:
        cells = (r["config"], r["batch"], r["encode_img_s"], r["decode_img_s"])
        ratios = (r["encode_vs_b1"], r["decode_vs_b1"])
        print("{:<16} {:>5} {:>10.1f} {:>10.1f} {:>9.2f} {:>9.2f}".format(*cells, *ratios))
    g = results["gpt2"]
    print(
        f"gpt2: {g['tokens']} tokens; tiktoken {g['tiktoken_tok_s']:.0f} tok/s, "
        f"encode {g['encode_tok_s']:.0f} tok/s ({g['encode_vs_tiktoken']:.2f}x), "
        f"encode_batch {g['encode_batch_tok_s']:.0f} tok/s"
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
