"""The unified vocabulary: one id space over every tokenizer plus special tokens.

Layout (arXiv 2312.02520, the sequence layout): each configured tokenizer gets
one contiguous range of global ids, in config order; the special tokens follow,
then the caption-structure tags. With GPT-2 BPE (50257) + VQ-GAN (1024) + the 9
specials the vocabulary has 51290 ids; adding the 1001 box bins and the 4
category/box tags gives 52295, the paper's count.

    global id:  [ gpt2 0..50256 | vqgan 50257..51280 | bins ... | specials | tags ]

Every id belongs to one *span* (a tokenizer's name, or "special"); the span
index of a token is what the sequence packer turns into routing attributes and
what constrained decoding uses to restrict logits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from unicl.plugins import import_plugins
from unicl.tokenizers.base import Tokenizer, build_tokenizer

#: The 9 special tokens of the base vocabulary. The prompt layout uses [BOI]
#: (before an image), [BOT] (before text), [EOC] (after an in-context pair) and
#: [PAD]; the others are reserved so that plugins and later layouts keep ids stable.
BASE_SPECIALS = ("[PAD]", "[BOI]", "[BOT]", "[EOC]", "[BOS]", "[EOS]", "[SEP]", "[MASK]", "[UNK]")
#: Category and box tags of the caption template (arXiv 2312.02520, captioning).
CAPTION_TAGS = ("<c_st>", "<c_ed>", "<b_st>", "<b_ed>")
SPECIAL_SPAN = "special"


@dataclasses.dataclass
class VocabConfig:
    """Special tokens and embedding padding of the unified vocabulary."""

    specials: list[str] = dataclasses.field(default_factory=lambda: list(BASE_SPECIALS))
    tags: list[str] = dataclasses.field(default_factory=lambda: list(CAPTION_TAGS))
    #: the embedding table is padded to a multiple of this (fast matmuls); 1 = no padding
    pad_to_multiple: int = 64

    def __post_init__(self) -> None:
        names = [*self.specials, *self.tags]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"vocab: special tokens/tags listed twice: {duplicates}")
        if "[PAD]" not in self.specials:
            raise ValueError("vocab.specials must contain [PAD]")
        if self.pad_to_multiple < 1:
            raise ValueError(f"vocab.pad_to_multiple must be >= 1, got {self.pad_to_multiple}")


class Vocabulary:
    """Global <-> local id mapping over a list of tokenizers plus special tokens."""

    def __init__(self, tokenizers: Sequence[Tokenizer], config: VocabConfig | None = None):
        self.config = config or VocabConfig()
        self.tokenizers: dict[str, Tokenizer] = {}
        self.ranges: dict[str, range] = {}
        start = 0
        for tok in tokenizers:
            if tok.name in self.tokenizers:
                raise ValueError(f"tokenizer {tok.name!r} is configured twice")
            if tok.name == SPECIAL_SPAN:
                raise ValueError(f"a tokenizer may not be named {SPECIAL_SPAN!r} (reserved span)")
            if tok.vocab_size < 1:
                raise ValueError(f"tokenizer {tok.name!r} has no ids (vocab_size {tok.vocab_size})")
            self.tokenizers[tok.name] = tok
            self.ranges[tok.name] = range(start, start + tok.vocab_size)
            start += tok.vocab_size
        specials_start = start
        self.token_to_id: dict[str, int] = {}
        for name in [*self.config.specials, *self.config.tags]:
            self.token_to_id[name] = start
            start += 1
        self.ranges[SPECIAL_SPAN] = range(specials_start, start)
        self._size = start
        self.id_to_token = {i: n for n, i in self.token_to_id.items()}
        #: span names in id order; a token's span index indexes this list
        self.spans: list[str] = [*self.tokenizers, SPECIAL_SPAN]
        span_of = torch.empty(self._size, dtype=torch.long)
        for index, span in enumerate(self.spans):
            span_of[self.ranges[span].start : self.ranges[span].stop] = index
        self._span_of = span_of

    @classmethod
    def from_config(cls, cfg) -> Vocabulary:
        """Build the tokenizers named in `cfg.tokenizers` (a UniclConfig) and their vocabulary.

        The modules listed in `cfg.plugins` are imported first, so tokenizers they
        register can be named in `cfg.tokenizers`.
        """
        import_plugins(cfg.plugins)
        tokenizers = [build_tokenizer(spec) for spec in cfg.tokenizers]
        return cls(tokenizers, cfg.vocab)

    def __len__(self) -> int:
        return self._size

    @property
    def embedding_size(self) -> int:
        """Rows of the embedding table: len(self) rounded up to `pad_to_multiple`."""
        m = self.config.pad_to_multiple
        return (self._size + m - 1) // m * m

    @property
    def pad_id(self) -> int:
        return self.token_to_id["[PAD]"]

    def __getitem__(self, token: str) -> int:
        """Global id of a special token or tag, e.g. vocab["[BOI]"]."""
        try:
            return self.token_to_id[token]
        except KeyError:
            raise KeyError(
                f"{token!r} is not a special token of this vocabulary; "
                f"known: {', '.join(self.token_to_id)}"
            ) from None

    def __contains__(self, token: object) -> bool:
        return token in self.token_to_id

    # ---- global <-> local ------------------------------------------------ #

    def _range(self, name: str) -> range:
        try:
            return self.ranges[name]
        except KeyError:
            configured = ", ".join(self.tokenizers)
            raise KeyError(
                f"no tokenizer {name!r} in this vocabulary; configured: {configured}"
            ) from None

    def to_global(self, name: str, local_ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Local ids of tokenizer `name` -> global ids."""
        r = self._range(name)
        ids = torch.as_tensor(local_ids, dtype=torch.long)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(r)):
            raise ValueError(f"{name}: local ids must lie in [0, {len(r)}), got {ids.tolist()[:8]}")
        return ids + r.start

    def to_local(self, name: str, global_ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Global ids that belong to tokenizer `name` -> its local ids."""
        r = self._range(name)
        ids = torch.as_tensor(global_ids, dtype=torch.long)
        if ids.numel() and (int(ids.min()) < r.start or int(ids.max()) >= r.stop):
            raise ValueError(
                f"ids {ids.tolist()[:8]} are not all {name} ids (range [{r.start}, {r.stop}))"
            )
        return ids - r.start

    def encode(self, name: str, payload) -> torch.Tensor:
        """Tokenize `payload` with tokenizer `name` and return global ids."""
        self._range(name)  # unknown names: KeyError listing the configured ones
        return self.to_global(name, self.tokenizers[name].encode(payload))

    def decode(self, name: str, global_ids: torch.Tensor | Sequence[int]):
        """Global ids of tokenizer `name` -> its payload."""
        return self.tokenizers[name].decode(self.to_local(name, global_ids))

    # ---- per-id lookups ------------------------------------------------- #

    def span_index(self, ids: torch.Tensor) -> torch.Tensor:
        """For each global id, the index (into `self.spans`) of the span it belongs to."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self._size):
            raise ValueError(f"global ids must lie in [0, {self._size}); got {ids.tolist()[:8]}")
        return self._span_of.to(ids.device)[ids]

    def span_of(self, token_id: int) -> str:
        """Name of the span ("gpt2", "vqgan", ..., "special") a global id belongs to."""
        return self.spans[int(self.span_index(torch.tensor([token_id]))[0])]

    def allowed_mask(self, spans: Sequence[str] = (), tokens: Sequence[str] = ()) -> torch.Tensor:
        """Bool mask over the embedding rows: True for ids of `spans` and the named `tokens`.

        Used by constrained decoding: e.g. allowed_mask(["vqgan"]) for a mask image,
        allowed_mask(["gpt2", "bins"], ["<c_st>", ..., "[EOC]"]) for a caption.
        Padding rows beyond len(self) are never allowed.
        """
        mask = torch.zeros(self.embedding_size, dtype=torch.bool)
        for span in spans:
            r = self._range(span)
            mask[r.start : r.stop] = True
        for token in tokens:
            mask[self[token]] = True
        return mask

    def code_features(self) -> torch.Tensor:
        """(embedding_size, F) fixed features of the ids whose tokenizer describes its codes.

        A tokenizer with `code_vectors() -> (vocab_size, e)` (the VQ-GAN's codebook, the mask
        bits of "maskbits") fills its id range in its own block of e columns, standardised
        over its codes; every other row is 0. F is the sum of the blocks' widths (0 if none).
        The decoder projects these into its input (ModelConfig.code_features), so that an
        image code starts out meaning what it looks like instead of a random vector.
        """
        blocks = []
        for name, tok in self.tokenizers.items():
            vectors = getattr(tok, "code_vectors", None)
            if vectors is None:
                continue
            v = torch.as_tensor(vectors(), dtype=torch.float32)  # (K, e)
            if v.dim() != 2 or v.shape[0] != len(self.ranges[name]):
                raise ValueError(
                    f"{name}.code_vectors() must be ({len(self.ranges[name])}, e), "
                    f"got {tuple(v.shape)}"
                )
            v = (v - v.mean(0)) / v.std(0).clamp_min(1e-6)
            blocks.append((self.ranges[name], v))
        width = sum(v.shape[1] for _, v in blocks)
        out = torch.zeros(self.embedding_size, width)
        column = 0
        for span, v in blocks:
            out[span.start : span.stop, column : column + v.shape[1]] = v
            column += v.shape[1]
        return out

    def describe(self) -> str:
        """One line per span: name, id range, size."""
        lines = [f"{len(self)} ids ({self.embedding_size} embedding rows)"]
        for span in self.spans:
            r = self.ranges[span]
            lines.append(f"  {span:<10} [{r.start}, {r.stop})  {len(r)}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(self.ranges[s])}" for s in self.spans)
        return f"Vocabulary({len(self)}: {sizes})"
