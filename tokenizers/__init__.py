"""Modality tokenizers (plugins), installed as `unicl.tokenizers`.

Importing this package registers the built-in tokenizers: "gpt2" (GPT-2 BPE
text), "vqgan" (images and masks), "maskbits" (masks as exact patch bits) and
"bins" (numbers and boxes). A new modality
is a module that registers a `Tokenizer` subclass with `TOKENIZERS` (see
docs/plugins.md); nothing here needs to change for it.
"""

from unicl.tokenizers import bins, gpt2, maskbits, vqgan  # noqa: F401  (importing registers them)
from unicl.tokenizers.base import (
    TOKENIZERS,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
)

__all__ = ["TOKENIZERS", "Tokenizer", "build_tokenizer", "load_tokenizer"]
