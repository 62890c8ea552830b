"""Benchmark shapes-world generation (images/s) against a one-process baseline.

    python tools/bench_world.py --images 1000 --repeats 3 --headline 10000

Times `unicl.tasks.world.make_world` (rendering, PNG and json writing) with 1
process (the baseline) and with `--workers` processes on the same images, then
once more for `--headline` images with `--workers` processes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from unicl.tasks.world import WorldSpec, make_world


def timed(images: int, size: int, workers: int) -> float:
    spec = WorldSpec(seed=0, images=images, val_images=0, size=size)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        make_world(Path(tmp) / "w", spec, workers=workers, progress=False)
        return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--headline", type=int, default=10000, help="0 to skip")
    args = parser.parse_args()
    base = [timed(args.images, args.size, 1) for _ in range(args.repeats)]
    par = [timed(args.images, args.size, args.workers) for _ in range(args.repeats)]
    b, p = statistics.median(base), statistics.median(par)
    print(f"{args.images} images at {args.size} px, median of {args.repeats}:")
    print(f"  1 process:   {b:8.1f} images/s")
    print(f"  {args.workers} processes: {p:8.1f} images/s  ({p / b:.2f}x)")
    if args.headline:
        rate = timed(args.headline, args.size, args.workers)
        print(
            f"{args.headline} images at {args.size} px, {args.workers} processes: "
            f"{rate:.1f} images/s ({args.headline / rate:.0f} s)"
        )


if __name__ == "__main__":
    main()
