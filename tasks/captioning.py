"""Class-aware in-context region captioning (arXiv 2312.02520, tasks and sequence layout).

An episode shows k (image, region, caption) demonstrations of one category and a
query image with its region; the model writes the query's caption. One pair:

    [BOI] image codes [BOT] Category: <c_st> name <c_ed>. Bboxes: <b_st> x0 y0 x1 y1
    <b_ed>. Caption: text [EOC] [PAD] ...

The template's literal words are ours (the paper fixes its structure); the box is
normalised by the crop to [0, 1] and written as 4 bin tokens (Pix2Seq style, 1001
bins = 3 decimals). With `region_tokens` n > 0 the box is followed by the region's
own image codes, `<b_ed> [BOI] codes [BOT] . Caption:`: the codes of the grid cells
whose centres lie in the box (at most n, a lattice of evenly spaced rows and columns),
as region features are given to region captioners; the caption's words then sit next to what
they describe instead of a pair's length away. The pair is padded after [EOC] to the
length of an image pair (`pad_to_image_length`), as the paper pads captions to the
image length. The text part is the pair's output (it carries loss). At inference the
prompt runs up to and including "Caption:" (`generate: caption`, region captioning:
the box is given); `generate: box` ends the prompt after "Bboxes:" (dense
captioning: box and caption are generated), `generate: category` after "Category:".

Flips: a horizontally flipped region keeps its caption true only if "left" and
"right" swap, so training flips also swap those words (`swap_left_right`); with
it off, captioning views are never flipped.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from unicl.tasks.base import TASKS, Task
from unicl.tasks.prompt import Episode, Segment, Shot
from unicl.tasks.scoring import CaptioningScorer
from unicl.tasks.segmentation import codes_per_image
from unicl.tasks.sources import caption_pools
from unicl.tasks.user import caption_record
from unicl.tasks.vg import builtin_synonyms

#: where `rename_prob`'s new names come from (CaptioningTask)
RENAME_WORDS = ("made_up", "categories", "both")

#: generation start -> index of the first generated segment in a captioning pair
GENERATE_FROM = {"category": 2, "box": 6, "caption": 10}

_LEFT_RIGHT = re.compile(r"\b(left|right|Left|Right|LEFT|RIGHT)(most|ward|wards)?\b")
_SWAP = {"left": "right", "right": "left", "Left": "Right", "Right": "Left", "LEFT": "RIGHT"}
_SWAP["RIGHT"] = "LEFT"


_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "gl", "tr")
_VOWELS = ("a", "e", "i", "o", "u")


def made_up_word(rng: np.random.Generator) -> str:
    """A pronounceable two-syllable non-word (e.g. "tolim"): a category name to copy, not know."""
    syllables = [_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(5)] for _ in range(2)]
    return "".join(syllables) + ("", "n", "m", "k")[rng.integers(4)]


@functools.cache
def _name_pattern(category: str) -> re.Pattern[str]:
    """A category's name and synonyms as whole words (plurals included), any case; built
    once per category (every renamed training episode asks for it)."""
    names = (category, *builtin_synonyms([category])[category])
    return re.compile(
        r"\b("
        + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
        + r")(e?s)?\b",
        re.IGNORECASE,
    )


def _unused_category(
    texts: Sequence[str], category: str, categories: Sequence[str], rng: np.random.Generator
) -> str | None:
    """A category of `categories` other than `category` whose names `texts` never use."""
    unused = [
        c
        for c in sorted(set(categories) - {category})
        if not any(_name_pattern(c).search(t) for t in texts)
    ]
    return unused[int(rng.integers(len(unused)))] if unused else None


def region_codes(codes: np.ndarray, box: Sequence[float], limit: int) -> np.ndarray:
    """The codes of a square grid's cells whose centres lie in `box` ([0, 1] view coordinates).

    codes: (G * G,) in raster order. A box between cell centres gets the cell under its
    centre. Over `limit` cells, evenly spaced rows and columns of them are kept (the longer
    side thinned first), so the codes stay a lattice over the whole region.
    """
    grid = int(round(np.sqrt(codes.size)))
    if grid * grid != codes.size:
        raise ValueError(f"region codes need a square grid of codes, got {codes.size}")
    centres = (np.arange(grid) + 0.5) / grid

    def inside(lo: float, hi: float) -> np.ndarray:
        hits = np.flatnonzero((centres >= lo) & (centres <= hi))
        return hits if hits.size else np.array([min(int((lo + hi) / 2 * grid), grid - 1)])

    x0, y0, x1, y1 = box
    rows, cols = inside(y0, y1), inside(x0, x1)
    n_rows, n_cols = rows.size, cols.size
    while n_rows * n_cols > limit:
        if n_rows >= n_cols:
            n_rows -= 1
        else:
            n_cols -= 1
    rows = rows[np.linspace(0, rows.size - 1, n_rows).round().astype(int)]
    cols = cols[np.linspace(0, cols.size - 1, n_cols).round().astype(int)]
    return codes[(rows[:, None] * grid + cols[None, :]).reshape(-1)]


def swap_left_right(text: str) -> str:
    """'the left cat' -> 'the right cat' (whole words, case kept): a mirrored caption."""
    return _LEFT_RIGHT.sub(lambda m: _SWAP[m.group(1)] + (m.group(2) or ""), text)


@dataclasses.dataclass
class CaptionAnswer:
    """A generated caption (and, when generated, its box in original pixels and category)."""

    text: str
    box: tuple[float, float, float, float] | None = None
    category: str | None = None


@TASKS.register("captioning")
class CaptioningTask(Task):
    """k (image, box, caption) demonstrations + a query (image, box) -> the caption.

    Options beside the common ones of `Task`: `generate` ("caption" | "box" | "category":
    where the generated part of the query starts), `pad_to_image_length` (pad each pair to
    the image-pair length, the paper's layout), `swap_left_right` (flip with word swapping;
    off = no flips), `text_tokenizer`, `box_tokenizer`, `region_tokens`: repeat up to this
    many of the image's codes under the box right after the box (0 = the paper's layout);
    `rename_prob`: the probability that a training episode calls its category by a made-up
    word instead (in every pair's category field and captions, synonyms included), so that
    the model learns to take the region's noun from the prompt: without it a model only ever
    writes the names of its training categories, and never an unseen category's;
    `rename_words`: where the new name comes from: "made_up" (a pronounceable non-word),
    "categories" (another training category's name that the episode's text does not use:
    the prompt's name then contradicts what the region looks like, so the loss rewards
    writing the prompt's name over the one the image suggests) or "both" (either, at even
    odds).
    """

    name = "captioning"

    def __init__(
        self,
        generate: Literal["caption", "box", "category"] = "caption",
        pad_to_image_length: bool = True,
        swap_left_right: bool = True,
        text_tokenizer: str = "gpt2",
        box_tokenizer: str = "bins",
        rename_prob: float = 0.0,
        rename_words: str = "made_up",
        region_tokens: int = 0,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        if not swap_left_right:  # a flip without swapping the words would mislabel the caption
            self.flip_prob = 0.0
        if generate not in GENERATE_FROM:
            raise ValueError(
                f"captioning: generate must be one of {list(GENERATE_FROM)}, got {generate!r}"
            )
        self.generate = generate
        self.pad_to_image_length = pad_to_image_length
        self.swap_left_right = swap_left_right
        self.text_tokenizer = text_tokenizer
        self.box_tokenizer = box_tokenizer
        if not 0.0 <= rename_prob <= 1.0:
            raise ValueError(f"captioning: rename_prob must lie in [0, 1], got {rename_prob!r}")
        self.rename_prob = float(rename_prob)
        if rename_words not in RENAME_WORDS:
            raise ValueError(
                f"captioning: rename_words must be one of {list(RENAME_WORDS)}, "
                f"got {rename_words!r}"
            )
        self.rename_words = rename_words
        if isinstance(region_tokens, bool) or not isinstance(region_tokens, int):
            raise ValueError(f"captioning: region_tokens must be an integer, got {region_tokens!r}")
        if region_tokens < 0:
            raise ValueError(f"captioning: region_tokens must be >= 0, got {region_tokens}")
        if region_tokens and generate != "caption":
            raise ValueError(
                f"captioning: region_tokens needs the box in the prompt (generate: caption), "
                f"got generate: {generate!r}"
            )
        self.region_tokens = region_tokens

    def augment(
        self, episode: Episode, rng: np.random.Generator, categories: Sequence[str] = ()
    ) -> Episode:
        """Training only: with probability `rename_prob`, rename the category everywhere
        (`categories`: the training categories, the names `rename_words` may draw)."""
        if self.rename_prob == 0.0 or rng.random() >= self.rename_prob:
            return episode
        word = made_up_word(rng)
        if self.rename_words == "categories" or (
            self.rename_words == "both" and rng.random() < 0.5
        ):
            texts = [
                s.payload
                for s in (*episode.prefix, *(s for pair in episode.pairs for s in pair))
                if s.modality == self.text_tokenizer and isinstance(s.payload, str)
            ]
            word = _unused_category(texts, episode.category, categories, rng) or word
        pattern = _name_pattern(episode.category)

        def rename(segment: Segment) -> Segment:
            if segment.modality != self.text_tokenizer or not isinstance(segment.payload, str):
                return segment
            return dataclasses.replace(segment, payload=pattern.sub(word, segment.payload))

        pairs = [[rename(s) for s in pair] for pair in episode.pairs]
        prefix = [rename(s) for s in episode.prefix]
        return dataclasses.replace(episode, category=word, pairs=pairs, prefix=prefix)

    # ---- records ----------------------------------------------------------- #

    def load_pools(self, data_cfg: Any, split: str) -> dict[str, list[Any]]:
        return caption_pools(data_cfg, split)

    def skip_reason(self, record: Any) -> str | None:
        x0, y0, x1, y1 = record.box
        if x1 - x0 < 1 or y1 - y0 < 1:
            return "degenerate box"
        if not record.phrase.strip():
            return "empty caption"
        if self.vocab is not None and self.pad_to_image_length:
            if self.text_length(record) > self.text_budget():
                return "caption longer than the image pair"
        return None

    def record_id(self, record: Any) -> str:
        return str(record.region_id)

    def text_budget(self) -> int:
        """Tokens the text part ([BOT] ... [EOC]) may take in a padded pair: n + 2."""
        return codes_per_image(self.vocab.tokenizers[self.image_tokenizer]) + 2

    def text_length(self, record: Any) -> int:
        """Tokens of a record's text part: [BOT], template, 4 box bins, caption, [EOC]."""
        tok = self.vocab.tokenizers[self.text_tokenizer]
        words = ("Category:", f" {record.category}", ". Bboxes:", ". Caption:")
        text = sum(len(tok.encode(w)) for w in words) + len(tok.encode(f" {record.phrase.strip()}"))
        # region codes: [BOI] + at most n codes + [BOT] again
        region = self.region_tokens + 2 if self.region_tokens else 0
        return 1 + text + 4 + 4 + 1 + region  # [BOT] + text + 4 tags + 4 bins + [EOC]

    # ---- views and pairs ----------------------------------------------------- #

    def cache_arrays(self, shot: Shot) -> dict[str, tuple[str, np.ndarray]]:
        return {"image": ("", shot.view.apply(shot.record.load_image()))}

    def pair(self, shot: Shot, query: bool = False) -> list[Segment]:
        record, view = shot.record, shot.view
        codes = shot.codes.get("image")
        image = None if codes is not None else view.apply(record.load_image())
        if self.region_tokens and codes is None:  # the region's codes come from the image's
            if self.vocab is None:
                raise ValueError("captioning: region_tokens needs a vocabulary (task.bind)")
            codes = np.asarray(self.vocab.tokenizers[self.image_tokenizer].encode(image))
            image = None
        caption = record.phrase.strip()
        if view.flip:
            caption = swap_left_right(caption)
        # a user's query has no caption: its caption segment is unanswered (Segment.answered)
        caption_text = f" {caption}" if getattr(record, "answered", True) else None
        box = [round(v, 3) for v in view.box_to_view(record.box)]
        out = "output"
        region = []
        if self.region_tokens:
            ids = region_codes(np.asarray(codes).reshape(-1), box, self.region_tokens)
            region = [Segment(self.image_tokenizer, None, "input", ids=ids)]
        return [
            Segment(self.image_tokenizer, image, "input", ids=codes),
            Segment(self.text_tokenizer, "Category:", out),
            Segment("special", "<c_st>", out),
            Segment(self.text_tokenizer, f" {record.category}", out),
            Segment("special", "<c_ed>", out),
            Segment(self.text_tokenizer, ". Bboxes:", out),
            Segment("special", "<b_st>", out),
            Segment(self.box_tokenizer, box, out),
            Segment("special", "<b_ed>", out),
            *region,
            Segment(self.text_tokenizer, ". Caption:", out),
            Segment(self.text_tokenizer, caption_text, out),
        ]

    def pad_pairs(self) -> bool:
        return self.pad_to_image_length

    def generate_from(self) -> int | None:
        return GENERATE_FROM[self.generate] + (1 if self.region_tokens else 0)

    # ---- user prompts and answers ---------------------------------------------- #

    demo_fields = ("image", "box", "text")
    query_fields = ("image", "box")

    def user_record(self, item: Any, image_id: int, category: str) -> Any:
        return caption_record(item, image_id, category)

    def scorer(self, baselines: bool = True) -> Any:
        return CaptioningScorer()

    def postprocess(self, episode: Episode, generated: Sequence[int], vocab: Any) -> CaptionAnswer:
        """Generated global ids (from the generation start to [EOC]) -> CaptionAnswer.

        The caption is the text after the last tag, with the template's ". Caption:"
        removed when it was generated too; a generated box is mapped back to the
        query's original pixels, a generated category is read between its tags.
        """
        ids = [int(i) for i in generated]
        eoc = vocab["[EOC]"]
        if eoc in ids:
            ids = ids[: ids.index(eoc)]
        tags = {vocab[t]: t for t in ("<c_st>", "<c_ed>", "<b_st>", "<b_ed>")}
        text_span = vocab.ranges[self.text_tokenizer]
        box_span = vocab.ranges[self.box_tokenizer]
        category = box = None
        last_tag = max((i for i, t in enumerate(ids) if t in tags), default=-1)
        if vocab["<c_st>"] in ids and vocab["<c_ed>"] in ids:
            a, b = ids.index(vocab["<c_st>"]), ids.index(vocab["<c_ed>"])
            category = self._text(vocab, [t for t in ids[a + 1 : b] if t in text_span]).strip()
        bins = [t for t in ids if t in box_span]
        if len(bins) >= 4:
            values = vocab.decode(self.box_tokenizer, bins[:4]).tolist()
            box = episode.meta["query_view"].box_from_view(values)
        tail = [t for t in ids[last_tag + 1 :] if t in text_span]
        text = self._text(vocab, tail).strip()
        if last_tag >= 0 and text.startswith("."):
            text = text[1:].strip()
        if text.startswith("Caption:"):
            text = text[len("Caption:") :].strip()
        return CaptionAnswer(text=text, box=box, category=category)

    def _text(self, vocab: Any, ids: Sequence[int]) -> str:
        return vocab.decode(self.text_tokenizer, ids) if ids else ""
