"""Where unicl keeps downloaded or derived files (the GPT-2 BPE table, caches).

The cache root is `$UNICL_CACHE` when set, else `$XDG_CACHE_HOME/unicl`, else
`~/.cache/unicl`. Individual files can also be pointed at explicitly through the
owning component's config (e.g. the gpt2 tokenizer's `bpe_file` option), which
always wins over the cache.
"""

from __future__ import annotations

import os
from pathlib import Path

#: sha256 of GPT-2's merge table as shipped in openai-whisper (whisper/assets/gpt2.tiktoken).
GPT2_BPE_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_BPE_FILENAME = "gpt2.tiktoken"


def cache_dir() -> Path:
    """The root of unicl's cache (not created here)."""
    if os.environ.get("UNICL_CACHE"):
        return Path(os.environ["UNICL_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "unicl"


def gpt2_bpe_path() -> Path:
    """Where the GPT-2 BPE table is looked for by default."""
    return cache_dir() / GPT2_BPE_FILENAME
