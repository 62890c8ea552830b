"""The tokenizer plugin contract and the `TOKENIZERS` registry.

A tokenizer turns one modality's payloads (text, images, numbers, ...) into
integer ids in its own local range [0, vocab_size) and back. The vocabulary
(unicl/vocab.py) gives each configured tokenizer a contiguous slice of the one
shared id space, so tokenizers never know about each other or about offsets.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from unicl.registry import Registry

TOKENIZER_FILE = "tokenizer.json"

TOKENIZERS: Registry[type[Tokenizer]] = Registry(
    "tokenizer",
    contract="""
    A tokenizer plugin is a subclass of unicl.tokenizers.Tokenizer registered with
    @TOKENIZERS.register("name"). It sets the class attributes `name` (the registered
    name) and `modality` (what its payloads are: "text", "image", "number", ...),
    takes its options as keyword arguments (configs pass them by name), and implements
    `vocab_size`, `encode`, `decode` and `options`. See docs/plugins.md.
    """,
)


class Tokenizer(abc.ABC):
    """Base class of modality tokenizers (the plugin contract).

    Subclasses implement:
      - `vocab_size` (property): number of local ids; the ids are 0..vocab_size-1.
      - `encode(payload) -> torch.LongTensor` of shape (n,), every id in range.
        Invalid payloads (wrong type, dtype, shape, empty text) raise ValueError or
        TypeError with a message naming the problem.
      - `decode(ids) -> payload`: the inverse (up to the modality's quantisation);
        ids out of range raise ValueError.
      - `options() -> dict`: JSON-serialisable keyword arguments that rebuild an
        equivalent tokenizer (paths relative to a saved directory are allowed, see
        `save_files`).
    They may override:
      - `encode_batch` / `decode_batch` (defaults loop over `encode` / `decode`);
      - `save_files(directory) -> dict`: write weights or tables into `directory`
        and return option updates that point at them (the default writes nothing);
      - `special_tokens() -> list[str]`: none by default.
    Tokenizers are stateless after construction (no mutable caches visible to
    callers); `save(directory)` + `load_tokenizer(directory)` round-trips them.
    """

    name: ClassVar[str] = ""
    modality: ClassVar[str] = ""

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of local ids."""

    @abc.abstractmethod
    def encode(self, payload: Any) -> torch.Tensor:
        """One payload -> 1-D int64 local ids."""

    @abc.abstractmethod
    def decode(self, ids: torch.Tensor | Sequence[int]) -> Any:
        """1-D local ids -> one payload."""

    @abc.abstractmethod
    def options(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this tokenizer."""

    def encode_batch(self, payloads: Sequence[Any]) -> list[torch.Tensor]:
        """Many payloads -> a list of 1-D id tensors."""
        return [self.encode(p) for p in payloads]

    def decode_batch(self, ids: Sequence[torch.Tensor | Sequence[int]]) -> list[Any]:
        """Many id sequences -> a list of payloads."""
        return [self.decode(i) for i in ids]

    def save_files(self, directory: Path) -> dict[str, Any]:
        """Write the files this tokenizer needs into `directory`; return option updates."""
        return {}

    def save(self, directory: str | Path) -> Path:
        """Write `tokenizer.json` (+ files) so that `load_tokenizer(directory)` rebuilds it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        options = {**self.options(), **self.save_files(directory)}
        spec = {"name": self.name, "options": options}
        (directory / TOKENIZER_FILE).write_text(json.dumps(spec, indent=2, sort_keys=True))
        return directory

    def check_ids(self, ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """`ids` as a 1-D int64 tensor, or ValueError if any is outside [0, vocab_size)."""
        ids = torch.as_tensor(ids)
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError(f"{self.name}: ids must be integers, got dtype {ids.dtype}")
        ids = ids.long().reshape(-1)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            bad = ids[(ids < 0) | (ids >= self.vocab_size)][:5].tolist()
            raise ValueError(
                f"{self.name}: ids {bad} are outside the tokenizer's range [0, {self.vocab_size})"
            )
        return ids

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


def build_tokenizer(spec: dict[str, Any], base_dir: str | Path | None = None) -> Tokenizer:
    """A tokenizer from a config entry `{"name": ..., **options}`.

    Options named `*_path` / `*_file` / `checkpoint` that are relative are resolved
    against `base_dir` (the directory of a saved model or run), if given.
    """
    if "name" not in spec:
        raise ValueError(f"tokenizer entry {spec!r} has no 'name'; valid: {TOKENIZERS.names()}")
    options = {k: v for k, v in spec.items() if k != "name"}
    if base_dir is not None:
        for key, value in options.items():
            is_path = key.endswith(("_path", "_file", "_dir")) or key == "checkpoint"
            if is_path and isinstance(value, str) and not Path(value).is_absolute():
                options[key] = str(Path(base_dir) / value)
    return TOKENIZERS.build(spec["name"], **options)


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Rebuild a tokenizer written by `Tokenizer.save(directory)`."""
    directory = Path(directory)
    path = directory / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no saved tokenizer here (expected {TOKENIZER_FILE})")
    spec = json.loads(path.read_text())
    return build_tokenizer({"name": spec["name"], **spec["options"]}, base_dir=directory)


def uint8_mask(mask: np.ndarray, what: str) -> np.ndarray:
    """A uint8 mask of 0/255 values -> bool; anything else (0/1, label maps such as {0, 2},
    grey levels) is a ValueError naming `what`, never a silently empty or partial mask."""
    values = np.unique(mask)
    if not np.isin(values, (0, 255)).all():
        shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
        raise ValueError(
            f"{what}: a uint8 mask must hold only 0 and 255, got values {{{shown}}}; pass "
            "mask.astype(bool) for 0/1 masks or (labels == k) for a label map"
        )
    return mask == 255
