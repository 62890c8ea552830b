"""Render a few training episodes of both tasks as PNGs (what the model is shown).

Each row is one episode: 3 demonstrations, the query and the target, every image
seen through its (augmented) view; under the rows, the packed token sequence of
the first episode, coloured by token span and role, with the pair boundaries.

    python tools/render_episodes.py --world worlds/shapes-render --out docs/images
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import numpy as np


def build_vocab():
    from unicl.config import UniclConfig
    from unicl.tokenizers.vqgan import VQGANTokenizer
    from unicl.vocab import Vocabulary

    try:
        return Vocabulary.from_config(UniclConfig())
    except (FileNotFoundError, ValueError):
        # no trained VQ-GAN available: an untrained one still gives the token layout
        from unicl.tokenizers.bins import BinsTokenizer
        from unicl.tokenizers.gpt2 import GPT2Tokenizer

        return Vocabulary([GPT2Tokenizer(), VQGANTokenizer(checkpoint=None), BinsTokenizer()])


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = image.astype(np.float32)
    out[mask] = 0.45 * out[mask] + 0.55 * np.array([40, 220, 90])
    return out.astype(np.uint8)


def layout_strip(ax, packed, packer) -> None:
    """One coloured cell per token: span x role, pair starts marked."""
    colours = {
        ("vqgan", "input"): (0.35, 0.55, 0.85),
        ("vqgan", "output"): (0.15, 0.7, 0.35),
        ("gpt2", "input"): (0.95, 0.75, 0.3),
        ("gpt2", "output"): (0.9, 0.45, 0.1),
        ("bins", "output"): (0.7, 0.3, 0.7),
        ("special", "input"): (0.6, 0.6, 0.6),
        ("special", "output"): (0.25, 0.25, 0.25),
    }
    row = np.ones((1, len(packed), 3))
    for t, attribute in enumerate(packed.attributes.tolist()):
        _, span, role = packer.table.describe(attribute)
        row[0, t] = colours.get((span, role), (0.9, 0.9, 0.9))
    pads = packed.input_ids == packer.vocab.pad_id
    row[0, pads.numpy()] = (1.0, 1.0, 1.0)
    ax.imshow(row, aspect="auto", interpolation="nearest")
    for start in packed.pair_starts:
        ax.axvline(start - 0.5, color="black", linewidth=1)
    ax.axvline(packed.prefix_length - 0.5, color="red", linewidth=1.5, linestyle="--")
    ax.set_yticks([])
    ax.set_xlabel(
        f"{len(packed)} tokens; blue/green = image input/output codes, orange = text, purple = "
        f"box bins, grey = tags, white = [PAD]; black lines = pair starts, red = generation starts",
        fontsize=8,
    )


def render(task_name: str, streams, packer, out: Path, rows: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stream = streams[task_name]
    task = stream.task
    fig = plt.figure(figsize=(12, 3.1 * rows + 1.0))
    grid = fig.add_gridspec(rows + 1, 5, height_ratios=[1] * rows + [0.25])
    first = None
    for r in range(rows):
        index = r * 7
        category, query, demos = stream.draw(index)
        packed = packer.pack(task.episode(query, demos, category))
        first = first or packed
        for c, shot in enumerate([*demos, query, query]):
            ax = fig.add_subplot(grid[r, c])
            ax.set_xticks([])
            ax.set_yticks([])
            image = shot.view.apply(shot.record.load_image())
            is_target = c == len(demos) + 1
            if task_name == "segmentation":
                mask = shot.view.apply(shot.record.load_mask())
                shown = overlay(image, mask) if (c < len(demos) or is_target) else image
                if is_target:
                    shown = np.repeat(mask[..., None] * 255, 3, axis=2).astype(np.uint8)
                ax.imshow(shown)
            else:
                ax.imshow(image)
                x0, y0, x1, y1 = (
                    v * image.shape[0] for v in shot.view.box_to_view(shot.record.box)
                )
                ax.add_patch(
                    plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="yellow", lw=1.5)
                )
                if c < len(demos) or is_target:
                    caption = task.pair(shot)[-1].payload.strip()
                    ax.set_xlabel("\n".join(textwrap.wrap(caption, 28)), fontsize=7)
            title = f"demo {c + 1}" if c < len(demos) else ("query" if not is_target else "target")
            flip = " (flipped)" if shot.view.flip else ""
            ax.set_title(f"{title}{flip}" + (f"\n{category}" if c == 0 else ""), fontsize=8)
    layout_strip(fig.add_subplot(grid[rows, :]), first, packer)
    fig.suptitle(f"{task_name}: training episodes (3 demonstrations + query), augmented views")
    fig.tight_layout()
    path = out / f"episodes_{task_name}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--world", default="worlds/shapes-render", help="shapes world (made if missing)"
    )
    parser.add_argument("--out", default="docs/images", help="output directory")
    parser.add_argument("--rows", type=int, default=3, help="episodes per task")
    parser.add_argument("--image-size", type=int, default=64, help="crop side (tiny config: 64)")
    args = parser.parse_args()

    from unicl.config import UniclConfig
    from unicl.streams import build_task_streams
    from unicl.tasks.sources import DataConfig

    options = {"image_size": args.image_size, "cache_views": 0}
    cfg = UniclConfig(
        data=DataConfig(root=args.world, images=200, val_images=50, size=128, min_descriptions=0),
        tasks={"segmentation": dict(options), "captioning": dict(options)},
    )
    vocab = build_vocab()
    streams = build_task_streams(cfg, vocab, use_cache=False)
    packer = next(iter(streams.values())).packer
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("segmentation", "captioning"):
        print(f"wrote {render(name, streams, packer, out, args.rows)}")


if __name__ == "__main__":
    main()
