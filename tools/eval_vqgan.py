"""Round-trip quality of a VQ-GAN tokenizer on held-out shapes-world crops, plus a picture.

Measures image PSNR and mask IoU (encode -> decode -> threshold 127) on
deterministic object-centred val crops at the tokenizer's resolution, and saves a
grid of originals next to reconstructions (images and masks).

    python tools/eval_vqgan.py --checkpoint builtin:vqgan_shapes_tiny \
        --world worlds/vqgan --images 8000 --val-images 200 --records 300 \
        --png docs/images/vqgan_reconstructions.png
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from unicl.tasks.sources import DataConfig, segmentation_pools
from unicl.tokenizers.vqgan import VQGANTokenizer
from unicl.tokenizers.vqgan_train import evaluate, make_crops


def save_grid(tok, images, masks, path, columns=8):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images, masks = images[:columns], masks[:columns]
    rec = tok.decode(tok.encode(images))
    rec_masks = tok.decode_mask(tok.encode_mask(list(masks)))
    rows = [
        ("image", images),
        ("reconstruction", rec),
        ("mask", masks),
        ("mask round trip", rec_masks),
    ]
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.6 * columns, 1.7 * len(rows)))
    for r, (title, data) in enumerate(rows):
        for c in range(columns):
            ax = axes[r, c]
            ax.imshow(
                data[c],
                cmap="gray" if data[c].ndim == 2 else None,
                vmin=0,
                vmax=1 if data[c].ndim == 2 else None,
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(title, fontsize=8)
    fig.suptitle(
        f"VQ-GAN round trip at {tok.config.resolution} px ({tok.codes_per_image} codes each)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="builtin:vqgan_shapes_tiny")
    parser.add_argument("--world", default="worlds/vqgan")
    parser.add_argument("--images", type=int, default=8000, help="train images of that world")
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--records", type=int, default=300, help="val records to evaluate")
    parser.add_argument("--png", default=None, help="save originals vs reconstructions here")
    parser.add_argument("--json", default=None, help="write the numbers here")
    args = parser.parse_args()
    torch.set_flush_denormal(True)

    data = DataConfig(
        root=args.world, images=args.images, val_images=args.val_images, size=args.size
    )
    pools = segmentation_pools(data, "val")
    records = [r for name in sorted(pools) for r in pools[name]]
    pick = np.random.default_rng(1).permutation(len(records))[: args.records]
    records = [records[i] for i in sorted(pick)]
    tok = VQGANTokenizer(checkpoint=args.checkpoint)
    images, masks = make_crops(records, tok.config.resolution, 1, None, "val crops")
    report = evaluate(tok, images, masks)
    report["checkpoint"] = args.checkpoint
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    if args.png:
        order = np.random.default_rng(0).permutation(len(images))
        save_grid(tok, images[order], masks[order], args.png)
        print(f"saved {args.png}")


if __name__ == "__main__":
    main()
