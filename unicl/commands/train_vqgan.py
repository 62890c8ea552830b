"""`unicl train-vqgan CONFIG [key=value ...]`: train the VQ-GAN image/mask tokenizer.

CONFIG is a YAML file or a packaged config name (e.g. `vqgan_tiny`) holding
`VQGANTrainConfig` fields (tokenizers/vqgan_train.py); `key=value` arguments
override it. The loop and its outputs are described in docs/tokenizers.md.
"""

from __future__ import annotations

import argparse
import json

from unicl.commands import add_overrides


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML file or packaged config name (e.g. vqgan_tiny)")
    add_overrides(parser, "steps=500 out=runs/vq")


def main(args: argparse.Namespace) -> int:
    from unicl.config import apply_overrides, from_dict, read_yaml, resolve_config_path
    from unicl.tokenizers.vqgan_train import VQGANTrainConfig, train_vqgan

    data = apply_overrides(read_yaml(resolve_config_path(args.config)), args.overrides)
    cfg = from_dict(VQGANTrainConfig, data)
    report = train_vqgan(cfg)
    print(json.dumps(report, indent=2))
    return 0
