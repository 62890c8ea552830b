"""Cost of snapping a mask map to its image (`mask_refine: guided`, unicl/masks.py).

    python tools/bench_refine.py                  # 2 CPU cores: sizes of the shapes world and COCO

Times `refine_map` (the fast guided filter that answers use) against the exact filter on the
same inputs, per image size, with the radius the tiny config uses (a quarter of the side) and
reports the medians of `--repeats` calls, their ratio and how far the fast map is from the exact
one (mean absolute grey-level difference). The image is a random scene of flat discs, the map a
blocky 16 x 16 grid of cells, as the model answers.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from unicl.masks import refine_map


def scene(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 (H, W, 3), grey map (H, W) 0-255 on a 16 x 16 grid of cells)."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 128, np.uint8)
    yy, xx = np.mgrid[:height, :width]
    side = min(height, width)
    for _ in range(12):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        radius = rng.integers(side // 16, side // 4)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = rng.integers(0, 256, 3)
    cells = rng.random((16, 16)) * 255
    rows = np.minimum(np.arange(height) * 16 // height, 15)
    cols = np.minimum(np.arange(width) * 16 // width, 15)
    return image, cells[rows][:, cols].astype(np.float32)


def median_seconds(fn, args: tuple, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def exact_map(grey: np.ndarray, image: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """`refine_map` without the coarse grid: the exact guided filter at every pixel."""
    return refine_map(grey, image, radius, eps, step=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["128x128", "480x640", "1024x1024"])
    parser.add_argument("--radius", type=float, default=0.25, help="share of the longer side")
    parser.add_argument("--eps", type=float, default=1e-3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print("| image | radius px | fast (refine_map) ms | exact ms | exact / fast | mean abs diff |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        height, width = (int(v) for v in size.split("x"))
        image, grey = scene(height, width)
        radius = max(1, round(args.radius * max(height, width)))
        inputs = (grey, image, radius, args.eps)
        fast = median_seconds(refine_map, inputs, args.repeats)
        exact = median_seconds(exact_map, inputs, args.repeats)
        diff = float(np.abs(refine_map(*inputs) - exact_map(*inputs)).mean())
        print(
            f"| {height} x {width} | {radius} | {1000 * fast:.1f} | {1000 * exact:.1f} | "
            f"{exact / fast:.1f} | {diff:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
