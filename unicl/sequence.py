"""The sequence packer: an in-context episode -> one token sequence, and batching.

Layout (PAPER.md "Sequence layout"). Every image's codes are opened by `[BOI]`,
every block of text (a run of non-image segments: BPE text, tags, box bins) by
`[BOT]`, and every in-context pair is closed by `[EOC]`:

    segmentation pair:  [BOI] image codes [BOI] mask codes [EOC]            = 2n + 3
    captioning pair:    [BOI] image codes [BOT] Category: <c_st> name <c_ed>.
                        Bboxes: <b_st> x0 y0 x1 y1 <b_ed>. Caption: text [EOC] [PAD]...

A pair of an episode with `pad_pairs` is padded with `[PAD]` *after* its `[EOC]`
to the length of an image pair, 2n + 3 (n = tokens of the pair's first image), so
every pair starts at a fixed offset and a 3-demo + query episode at 256 px is
4 x 515 = 2060 tokens. Padding after `[EOC]` keeps `[EOC]` right behind the text:
the model learns to stop, and generation never has to produce padding.

Per token the packer produces
- `input_ids`: global vocabulary ids;
- `positions`: 0..T-1 (learned absolute positions; padding inside the sequence
  takes positions too, so the fixed pair offsets hold);
- `loss_weights`: weight of predicting token t from tokens < t: 1 on output
  tokens (the tokens of output segments and the tags that open or close them, in
  every pair, demos included), `input_image_weight` on input image codes, 0 on
  everything else, on padding and at t = 0;
- `attributes`: the routing attribute of the AG-MoE gate (PAPER.md "Mixture of
  experts"), task x token span x role:

      attribute = ((task_index * n_spans) + span_index) * 2 + role

  `task_index` is the task's position in the sorted list of configured task
  names, `span_index` the token's span in `Vocabulary.spans` (the tokenizers in
  config order, then "special" for specials and tags), `role` 0 for input and 1
  for output. A tag takes the role of the segment it opens ([BOI], [BOT]) or
  closes ([EOC]); padding is "special" input. With tasks (captioning,
  segmentation) and spans (gpt2, vqgan, bins, special) there are 2 x 4 x 2 = 16
  attributes; docs/prompt.md lists them.

`Packer.unpack` inverts `pack` (tokens back to an episode's segments), `collate`
right-pads a list of packed sequences of one task into a `Batch`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from unicl.tasks.base import Episode, Role, Segment
from unicl.vocab import SPECIAL_SPAN, Vocabulary

ROLES: dict[str, int] = {"input": 0, "output": 1}
BOI, BOT, EOC, PAD = "[BOI]", "[BOT]", "[EOC]", "[PAD]"


# --------------------------------------------------------------------------- #
# attributes
# --------------------------------------------------------------------------- #


class AttributeTable:
    """Task x span x role <-> attribute id (see the module docstring)."""

    def __init__(self, task_names: Sequence[str], spans: Sequence[str]) -> None:
        if not task_names:
            raise ValueError("AttributeTable needs at least one task name")
        if len(set(task_names)) != len(task_names):
            raise ValueError(f"task names listed twice: {list(task_names)}")
        self.tasks = sorted(task_names)
        self.spans = list(spans)

    def __len__(self) -> int:
        return len(self.tasks) * len(self.spans) * 2

    def task_index(self, task: str) -> int:
        try:
            return self.tasks.index(task)
        except ValueError:
            raise ValueError(
                f"task {task!r} is not configured; configured tasks: {', '.join(self.tasks)}"
            ) from None

    def attribute(self, task: str, span: str | int, role: Role | int) -> int:
        span_index = span if isinstance(span, int) else self.spans.index(span)
        role_id = role if isinstance(role, int) else ROLES[role]
        return (self.task_index(task) * len(self.spans) + span_index) * 2 + role_id

    def describe(self, attribute: int) -> tuple[str, str, str]:
        """attribute id -> (task, span, role)."""
        if not 0 <= attribute < len(self):
            raise ValueError(f"attribute {attribute} outside [0, {len(self)})")
        role = attribute % 2
        rest = attribute // 2
        return (
            self.tasks[rest // len(self.spans)],
            self.spans[rest % len(self.spans)],
            (
                "input",
                "output",
            )[role],
        )

    def rows(self) -> list[tuple[int, str, str, str]]:
        """(attribute, task, span, role) for every attribute, in id order."""
        return [(a, *self.describe(a)) for a in range(len(self))]


def num_attributes(vocab: Vocabulary, task_names: Sequence[str]) -> int:
    """Number of routing attributes for these tasks over this vocabulary's spans."""
    return len(AttributeTable(task_names, vocab.spans))


# --------------------------------------------------------------------------- #
# packed sequences and batches
# --------------------------------------------------------------------------- #


@dataclasses.dataclass
class GenerationStep:
    """One stretch of the query's answer that generation produces.

    Either exactly `length` tokens (an image: n codes; a forced tag: 1), or free
    tokens until `stop` is produced (included) or `max_length` tokens are reached.
    Allowed ids: the ids of `spans` plus the special tokens/tags in `tokens`.
    """

    spans: tuple[str, ...]
    tokens: tuple[str, ...]
    role: Role
    length: int | None = None
    stop: str | None = None
    max_length: int = 0

    def allowed_mask(self, vocab: Vocabulary) -> torch.Tensor:
        """(V,) bool over the embedding rows: the ids this step may produce."""
        return vocab.allowed_mask(self.spans, self.tokens)


@dataclasses.dataclass
class PackedSequence:
    """One episode as tokens (all tensors are 1-D of the same length T)."""

    task: str
    category: str
    input_ids: torch.Tensor  # (T,) int64 global ids
    attributes: torch.Tensor  # (T,) int64
    positions: torch.Tensor  # (T,) int64
    loss_weights: torch.Tensor  # (T,) float32
    pair_starts: list[int]  # offset of each pair's first token; the prefix is [0, pair_starts[0])
    query_end: int  # one past the query's [EOC] (padding may follow)
    prefix_length: int  # tokens given to the model when generating the query's answer
    generation: list[GenerationStep]
    pad_id: int
    pad_attribute: int
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.input_ids.numel())

    @property
    def prompt_ids(self) -> torch.Tensor:
        """(P,) the generation prompt: everything before the query's answer."""
        return self.input_ids[: self.prefix_length]

    @property
    def target_ids(self) -> torch.Tensor:
        """(G,) the query's answer as it should be generated ([EOC] included)."""
        return self.input_ids[self.prefix_length : self.query_end]


@dataclasses.dataclass
class Batch:
    """A right-padded batch of packed sequences of one task (the decoder's input)."""

    input_ids: torch.Tensor  # (B, T) int64, [PAD] on padding
    attributes: torch.Tensor  # (B, T) int64 in [0, num_attributes)
    positions: torch.Tensor  # (B, T) int64
    loss_weights: torch.Tensor  # (B, T) float32, 0 on padding
    attention_mask: torch.Tensor  # (B, T) bool, True on real tokens
    task: str

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)

    def pin_memory(self) -> Batch:
        pinned = {
            f.name: getattr(self, f.name).pin_memory()
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **pinned)


def collate(sequences: Sequence[PackedSequence], pad_to: int | None = None) -> Batch:
    """Right-pad sequences of ONE task to the longest (or `pad_to`) and stack them."""
    if not sequences:
        raise ValueError("collate: no sequences given")
    tasks = {s.task for s in sequences}
    if len(tasks) != 1:
        raise ValueError(
            f"collate: a batch holds one task (non-mixed batches); got {sorted(tasks)}"
        )
    longest = max(len(s) for s in sequences)
    width = longest if pad_to is None else pad_to
    if width < longest:
        raise ValueError(
            f"collate: pad_to={pad_to} is shorter than the longest sequence ({longest})"
        )
    b = len(sequences)
    first = sequences[0]
    input_ids = torch.full((b, width), first.pad_id, dtype=torch.long)  # (B, T)
    attributes = torch.full((b, width), first.pad_attribute, dtype=torch.long)  # (B, T)
    positions = torch.zeros((b, width), dtype=torch.long)  # (B, T)
    loss_weights = torch.zeros((b, width), dtype=torch.float32)  # (B, T)
    attention_mask = torch.zeros((b, width), dtype=torch.bool)  # (B, T)
    for row, seq in enumerate(sequences):
        t = len(seq)
        input_ids[row, :t] = seq.input_ids
        attributes[row, :t] = seq.attributes
        positions[row, :t] = seq.positions
        loss_weights[row, :t] = seq.loss_weights
        attention_mask[row, :t] = True
    return Batch(input_ids, attributes, positions, loss_weights, attention_mask, first.task)


# --------------------------------------------------------------------------- #
# the packer
# --------------------------------------------------------------------------- #


@dataclasses.dataclass
class _Run:
    """Tokens of one segment or tag while packing."""

    ids: np.ndarray  # (n,) int64 global ids
    span: int
    role: Role
    weight: float


class Packer:
    """Episodes -> PackedSequences for one vocabulary and one set of tasks.

    `max_positions`: the model's position budget (None = unchecked); a longer
    sequence is an error that says how to fit it. `input_image_weight`: per task
    name, the loss weight of input image codes (default 0).
    """

    def __init__(
        self,
        vocab: Vocabulary,
        task_names: Sequence[str],
        max_positions: int | None = None,
        input_image_weight: Mapping[str, float] | None = None,
        max_text_tokens: int = 256,
    ) -> None:
        self.vocab = vocab
        self.table = AttributeTable(task_names, vocab.spans)
        self.max_positions = max_positions
        self.input_image_weight = dict(input_image_weight or {})
        self.max_text_tokens = max_text_tokens
        self._special_span = vocab.spans.index(SPECIAL_SPAN)
        self._image_spans = {
            name
            for name, tok in vocab.tokenizers.items()
            if getattr(tok, "modality", "") == "image"
        }
        self._image_span_ids = {vocab.spans.index(name) for name in self._image_spans}
        # tokenizers are stateless, so the ids of a text payload never change: the
        # template's words, repeated in every pair, are encoded once
        self._text_ids: dict[tuple[str, str], np.ndarray] = {}
        for tag in (BOI, BOT, EOC, PAD):
            vocab[tag]  # fail early (KeyError naming the tag) if the vocabulary lacks one

    @property
    def num_attributes(self) -> int:
        return len(self.table)

    def generation_attribute_table(self, task: str, role: Role = "output") -> torch.Tensor:
        """(V,) int64: the attribute each vocabulary id carries when generated in `task`."""
        rows = self.vocab.embedding_size
        span_index = torch.full((rows,), self._special_span, dtype=torch.long)  # (V,)
        span_index[: len(self.vocab)] = self.vocab.span_index(torch.arange(len(self.vocab)))
        base = self.table.task_index(task) * len(self.table.spans)
        return (base + span_index) * 2 + ROLES[role]  # (V,)

    # ---- encoding ------------------------------------------------------------ #

    def is_image(self, segment: Segment) -> bool:
        return segment.modality in self._image_spans

    def encode_segment(self, segment: Segment) -> torch.Tensor:
        """(n,) global ids of one segment (cached local ids are used when present)."""
        return torch.from_numpy(self._encode(segment))

    def _encode(self, segment: Segment) -> np.ndarray:
        if segment.modality == SPECIAL_SPAN:
            return np.array([self.vocab[segment.payload]], dtype=np.int64)
        if segment.modality not in self.vocab.tokenizers:
            raise ValueError(
                f"segment modality {segment.modality!r} is not a configured tokenizer; "
                f"configured: {', '.join(self.vocab.tokenizers)} (or 'special')"
            )
        text_key = (segment.modality, segment.payload)
        if segment.ids is None and not segment.kind and isinstance(segment.payload, str):
            if text_key in self._text_ids:
                return self._text_ids[text_key]
        if segment.ids is not None:
            local = segment.ids
        else:
            tok = self.vocab.tokenizers[segment.modality]
            method = getattr(tok, f"encode_{segment.kind}", None) if segment.kind else tok.encode
            if method is None:
                raise ValueError(
                    f"tokenizer {segment.modality!r} has no encode_{segment.kind}() for "
                    f"segments of kind {segment.kind!r}"
                )
            local = method(segment.payload)
        if isinstance(local, torch.Tensor):
            local = local.numpy()
        local = np.asarray(local, dtype=np.int64).reshape(-1)  # (n,)
        r = self.vocab.ranges[segment.modality]
        if local.size and (local.min() < 0 or local.max() >= len(r)):
            raise ValueError(
                f"{segment.modality}: local ids must lie in [0, {len(r)}), got {local[:8].tolist()}"
            )
        ids = local + r.start
        if segment.ids is None and not segment.kind and isinstance(segment.payload, str):
            if len(self._text_ids) >= 65536:
                self._text_ids.clear()
            self._text_ids[text_key] = ids
        return ids

    def _tag(self, name: str, role: Role) -> _Run:
        # tags opening or closing an output segment are predicted (and weighted) like it
        weight = 1.0 if role == "output" else 0.0
        return _Run(np.array([self.vocab[name]], np.int64), self._special_span, role, weight)

    def _segment_run(self, segment: Segment, task: str) -> _Run:
        ids = self._encode(segment)
        span = (
            self._special_span
            if segment.modality == SPECIAL_SPAN
            else self.vocab.spans.index(segment.modality)
        )
        weight = 1.0 if segment.role == "output" else 0.0
        if segment.role == "input" and self.is_image(segment):
            weight = self.input_image_weight.get(task, 0.0)
        return _Run(ids, span, segment.role, weight)

    # ---- packing ------------------------------------------------------------- #

    def _pair_runs(self, segments: Sequence[Segment], task: str) -> tuple[list[_Run], list[int]]:
        """Runs of one pair (or the prefix) and, per segment, the index of its own run."""
        runs: list[_Run] = []
        content: list[int] = []
        in_text = False
        for segment in segments:
            if self.is_image(segment):
                runs.append(self._tag(BOI, segment.role))
                in_text = False
            elif not in_text:
                runs.append(self._tag(BOT, segment.role))
                in_text = True
            content.append(len(runs))
            runs.append(self._segment_run(segment, task))
        return runs, content

    def pack(self, episode: Episode) -> PackedSequence:
        """Lay out `episode` as one token sequence (see the module docstring)."""
        task = episode.task
        self.table.task_index(task)  # unknown task -> error naming the configured ones
        if not episode.pairs:
            raise ValueError(f"{task} episode has no pairs (a query pair is required)")
        runs: list[_Run] = []
        if episode.prefix:
            runs += self._pair_runs(episode.prefix, task)[0]
        pair_starts: list[int] = []
        gen_run = 0
        query_lengths: list[int] = []
        for index, pair in enumerate(episode.pairs):
            if not pair:
                raise ValueError(f"{task} episode: pair {index} has no segments")
            pair_starts.append(sum(len(r.ids) for r in runs))
            pair_runs, content = self._pair_runs(pair, task)
            pair_runs.append(self._tag(EOC, pair[-1].role))
            if episode.pad_pairs:
                pair_runs += self._padding(pair_runs, task, index)
            if index == len(episode.pairs) - 1:
                # the prompt ends right before the first generated segment's own tokens:
                # the [BOI]/[BOT] that opens it is part of the prompt
                gen_run = len(runs) + content[episode.generation_start()]
                query_lengths = [len(pair_runs[i].ids) for i in content]
            runs += pair_runs
        lengths = np.array([len(r.ids) for r in runs])
        total = int(lengths.sum())
        self._check_budget(episode, total, pair_starts)
        input_ids = torch.from_numpy(np.concatenate([r.ids for r in runs]))  # (T,)
        span = np.repeat([r.span for r in runs], lengths)  # (T,)
        role = np.repeat([ROLES[r.role] for r in runs], lengths)  # (T,)
        weights = np.repeat(np.array([r.weight for r in runs], np.float32), lengths)  # (T,)
        weights[0] = 0.0  # nothing predicts the first token
        base = self.table.task_index(task) * len(self.table.spans)
        attributes = torch.from_numpy((base + span) * 2 + role)  # (T,)
        prefix_length = int(lengths[:gen_run].sum())
        pad_id = self.vocab.pad_id
        query_end = total
        while query_end > prefix_length and int(input_ids[query_end - 1]) == pad_id:
            query_end -= 1
        return PackedSequence(
            task=task,
            category=episode.category,
            input_ids=input_ids,
            attributes=attributes,
            positions=torch.arange(total, dtype=torch.long),
            loss_weights=torch.from_numpy(weights),
            pair_starts=pair_starts,
            query_end=query_end,
            prefix_length=prefix_length,
            generation=self._generation_steps(
                episode, query_lengths, prefix_length, total - prefix_length
            ),
            pad_id=pad_id,
            pad_attribute=(base + self._special_span) * 2,
            meta=episode.meta,
        )

    def _padding(self, runs: list[_Run], task: str, index: int) -> list[_Run]:
        """[PAD] runs that bring a pair to the image-pair length 2n + 3."""
        images = [r for r in runs if r.span in self._image_span_ids]
        if not images:
            raise ValueError(f"{task} pair {index}: pad_pairs needs an image in every pair")
        target = 2 * (len(images[0].ids) + 1) + 1
        length = sum(len(r.ids) for r in runs)
        if length > target:
            raise ValueError(
                f"{task} pair {index} is {length} tokens, longer than the image-pair length "
                f"{target} it is padded to (captions are padded to the image length); shorten "
                f"the text (e.g. the caption task's max_caption_tokens) or use larger images"
            )
        if length == target:
            return []
        pad = np.full(target - length, self.vocab.pad_id, dtype=np.int64)
        return [_Run(pad, self._special_span, "input", 0.0)]

    def _check_budget(self, episode: Episode, total: int, pair_starts: list[int]) -> None:
        if self.max_positions is None or total <= self.max_positions:
            return
        prefix = pair_starts[0]
        pair_lengths = [b - a for a, b in zip(pair_starts, [*pair_starts[1:], total])]
        per_pair = max(pair_lengths)
        fit = max(0, (self.max_positions - prefix - pair_lengths[-1]) // per_pair)
        raise ValueError(
            f"{episode.task} episode with {episode.shots} demonstrations is {total} tokens, "
            f"more than the model's {self.max_positions} positions (prefix {prefix} + "
            f"{len(pair_lengths)} pairs of up to {per_pair} tokens). To fit it: use at most "
            f"{fit} demonstrations, smaller images (fewer codes per image), no category text, "
            f"or a model with more positions (model.max_positions)"
        )

    def _generation_steps(
        self, episode: Episode, lengths: list[int], prefix_length: int, remaining: int
    ) -> list[GenerationStep]:
        """How to generate the query's answer from its generation start.

        Images are exact-length steps (a forced [BOI] opens all but the first); a run
        of text segments is one free step over their spans and tags that ends with
        the tag opening what follows ([EOC] at the end of the pair). `max_length`
        counts the stop token: the padded pair's remaining tokens, else
        `max_text_tokens` (and never past the model's positions).
        """
        start = episode.generation_start()
        segments = episode.query[start:]
        budget = remaining if episode.pad_pairs else self.max_text_tokens
        if self.max_positions is not None:
            budget = min(budget, max(1, self.max_positions - prefix_length))
        steps: list[GenerationStep] = []
        index = 0
        while index < len(segments):
            segment = segments[index]
            if self.is_image(segment):
                if index > 0:
                    steps.append(GenerationStep((), (BOI,), segment.role, length=1))
                n = lengths[start + index]  # token count of this segment as packed
                steps.append(GenerationStep((segment.modality,), (), segment.role, length=n))
                index += 1
                continue
            text = []
            while index < len(segments) and not self.is_image(segments[index]):
                text.append(segments[index])
                index += 1
            stop = EOC if index == len(segments) else BOI
            spans = tuple(dict.fromkeys(s.modality for s in text if s.modality != SPECIAL_SPAN))
            tags = tuple(dict.fromkeys(s.payload for s in text if s.modality == SPECIAL_SPAN))
            steps.append(
                GenerationStep(spans, (*tags, stop), text[0].role, stop=stop, max_length=budget)
            )
        if steps[-1].stop != EOC:
            steps.append(GenerationStep((), (EOC,), segments[-1].role, length=1))
        return steps

    # ---- unpacking ----------------------------------------------------------- #

    def unpack(self, packed: PackedSequence, decode_images: bool = False) -> Episode:
        """Tokens -> the episode they encode (the inverse of `pack`, up to segmentation).

        Layout tags and padding are dropped; consecutive tokens of one span and role
        become one segment (so two adjacent text segments come back as one, except at
        the generation start, which is kept as a segment boundary). Segments carry
        their local `ids`; text and numbers are decoded, images only if
        `decode_images` (it runs the image decoder).
        """
        ids = packed.input_ids.tolist()
        attrs = packed.attributes.tolist()
        bounds = [*packed.pair_starts, len(ids)]
        cut = packed.prefix_length

        def segments(start: int, stop: int) -> list[Segment]:
            out: list[Segment] = []
            t = start
            while t < stop:
                token = ids[t]
                _, span, role = self.table.describe(attrs[t])
                if span == SPECIAL_SPAN:
                    name = self.vocab.id_to_token[token]
                    if name not in (BOI, BOT, EOC, PAD):
                        out.append(Segment(SPECIAL_SPAN, name, role))
                    t += 1
                    continue
                end = t + 1
                # the attribute encodes span and role: equal attributes = one segment
                while end < stop and end != cut and attrs[end] == attrs[t]:
                    end += 1
                local = self.vocab.to_local(span, ids[t:end])
                payload = None
                if span not in self._image_spans or decode_images:
                    payload = self.vocab.tokenizers[span].decode(local)
                out.append(Segment(span, payload, role, ids=local))
                t = end
            return out

        pairs = [segments(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        query_offsets = []
        t = bounds[-2]
        for segment in pairs[-1]:
            while self.vocab.id_to_token.get(ids[t]) in (BOI, BOT):
                t += 1
            query_offsets.append(t)
            t += 1 if segment.modality == SPECIAL_SPAN else len(segment.ids)
        return Episode(
            task=packed.task,
            category=packed.category,
            pairs=pairs,
            prefix=segments(0, bounds[0]),
            meta=dict(packed.meta),
            pad_pairs=packed.pad_id in ids[bounds[0] :],
            generate_from=query_offsets.index(cut) if cut in query_offsets else None,
        )
