"""`unicl fetch-bpe`: install GPT-2's BPE table into unicl's cache (offline text tokenizer).

The logic is `unicl.tokenizers.gpt2.install_gpt2_bpe`; see docs/tokenizers.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from unicl.commands import existing_file


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sdist",
        type=existing_file,
        default=None,
        help="an openai-whisper source distribution (.tar.gz) to read the table from; "
        "default: download openai-whisper==20250625 with pip",
    )
    parser.add_argument(
        "--dest",
        type=Path,
        default=None,
        help="file to write, or an existing directory to write gpt2.tiktoken into "
        "(default: unicl's cache; $UNICL_CACHE moves it)",
    )


def main(args: argparse.Namespace) -> int:
    from unicl.tokenizers.gpt2 import install_gpt2_bpe

    sdist = Path(args.sdist) if args.sdist is not None else None
    path = install_gpt2_bpe(sdist=sdist, dest=args.dest)
    print(f"GPT-2 BPE table ready: {path}")
    return 0
