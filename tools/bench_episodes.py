"""Benchmark: training episodes per second, built from the token cache vs from scratch.

"From scratch" reads the images, crops them and runs the VQ-GAN encoder on every
image and mask of the episode (what training would do without the cache);
"from cache" samples cached views and only packs tokens. Both build the same
kind of episode (3 demonstrations + query) through `TaskStream`. Also reported:
the time to build the cache (views per second) and the packer alone.

    python tools/bench_episodes.py --world worlds/shapes-bench --episodes 40 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--world", default="worlds/shapes-bench", help="shapes world (made if missing)"
    )
    parser.add_argument("--images", type=int, default=200, help="train images of the world")
    parser.add_argument("--episodes", type=int, default=40, help="episodes per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--views", type=int, default=4, help="cached views per record")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="where the VQ-GAN runs (cpu, cuda)")
    args = parser.parse_args()

    import torch

    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    from unicl.config import UniclConfig
    from unicl.streams import build_task_streams
    from unicl.tasks.sources import DataConfig
    from unicl.tokenizers.bins import BinsTokenizer
    from unicl.tokenizers.gpt2 import GPT2Tokenizer
    from unicl.tokenizers.vqgan import VQGANTokenizer
    from unicl.vocab import Vocabulary

    try:
        vq = VQGANTokenizer(device=args.device)  # the shipped tiny VQ-GAN (64 px, 8 x 8 codes)
    except (FileNotFoundError, ValueError):
        # same architecture, untrained: same cost
        vq = VQGANTokenizer(checkpoint=None, device=args.device)
    vocab = Vocabulary([GPT2Tokenizer(), vq, BinsTokenizer()])
    print(f"image tokenizer: vqgan {vq.config.resolution} px, {vq.codes_per_image} codes")
    with tempfile.TemporaryDirectory() as cache_dir:
        options = {"image_size": args.image_size, "cache_views": args.views, "cache_dir": cache_dir}
        data = DataConfig(
            root=args.world, images=args.images, val_images=50, size=128, min_descriptions=0
        )
        cfg = UniclConfig(data=data, tasks={"segmentation": options, "captioning": dict(options)})
        scratch = build_task_streams(cfg, vocab, use_cache=False, progress=False)
        start = time.perf_counter()
        cached = build_task_streams(cfg, vocab, progress=False)
        build = time.perf_counter() - start
        views = sum(s.size for s in cached.values()) * args.views
        print(f"cache build: {views} views in {build:.1f} s = {views / build:.1f} views/s")
        print("| task | built from | episodes/s (median) | ms/episode | vs scratch |")
        print("|---|---|---|---|---|")
        n = args.episodes
        for name in sorted(cached):
            rates = {}
            for label, stream in (("scratch", scratch[name]), ("cache", cached[name])):
                times = timed(lambda s=stream: s.examples(1000, n), args.repeats)
                rates[label] = n / statistics.median(times)
            episodes = [cached[name].episode(1000 + i) for i in range(n)]
            packer = cached[name].packer
            times = timed(lambda e=episodes, p=packer: [p.pack(x) for x in e], args.repeats)
            rates["packer only"] = n / statistics.median(times)
            for label, rate in rates.items():
                ratio = rate / rates["scratch"]
                print(f"| {name} | {label} | {rate:.1f} | {1000 / rate:.2f} | {ratio:.1f}x |")


if __name__ == "__main__":
    main()
