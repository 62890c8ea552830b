"""Modality tokenizers (plugins), installed as `unicl.tokenizers`.

Importing this package registers the built-in tokenizers: "gpt2" (GPT-2 BPE
text), "vqgan" (images and masks) and "bins" (numbers and boxes).
"""

from unicl.tokenizers.base import (
    TOKENIZERS,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
)

__all__ = ["TOKENIZERS", "Tokenizer", "build_tokenizer", "load_tokenizer"]
