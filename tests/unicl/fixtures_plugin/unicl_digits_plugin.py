"""An external tokenizer plugin used by tests/unicl/test_vocab.py.

It lives outside the unicl package: the test puts this directory on sys.path and
names the module in a config's `plugins:` list. Importing it registers the
"digits" tokenizer (a string of decimal digits -> one id per digit).
"""

from __future__ import annotations

from typing import Any

import torch

from unicl.tokenizers import TOKENIZERS, Tokenizer


@TOKENIZERS.register("digits")
class DigitsTokenizer(Tokenizer):
    name = "digits"
    modality = "number"

    def __init__(self, base: int = 10) -> None:
        if not 2 <= base <= 10:
            raise ValueError(f"digits: base must lie in [2, 10], got {base}")
        self.base = base

    @property
    def vocab_size(self) -> int:
        return self.base

    def encode(self, payload: Any) -> torch.Tensor:
        if not isinstance(payload, str) or not payload:
            raise TypeError(f"digits: expected a non-empty str of digits, got {payload!r}")
        ids = [int(ch) for ch in payload]
        if max(ids) >= self.base:
            raise ValueError(f"digits: {payload!r} has digits >= base {self.base}")
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(str(i) for i in self.check_ids(ids).tolist())

    def options(self) -> dict[str, Any]:
        return {"base": self.base}
