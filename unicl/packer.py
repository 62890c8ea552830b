"""The sequence packer: an in-context episode -> one token sequence, and batching.

Layout (arXiv 2312.02520, the sequence layout). Every image's codes are opened by
`[BOI]`, every block of text (a run of non-image segments: BPE text, tags, box
bins) by `[BOT]`, and every in-context pair is closed by `[EOC]`:

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
- `attributes`: the routing attribute of the AG-MoE gate, task x token span x role
  (unicl/attributes.py); a tag takes the role of the segment it opens ([BOI], [BOT]) or
  closes ([EOC]); padding is "special" input.

Parallel answers and aligned positions (`Episode.parallel`, `Episode.aligned_positions`;
docs/model.md "Making the model look at the image"). With aligned positions, the tokens of a
pair's output grid segment (its mask) take the positions of the pair's input image, so mask
token (r, c) and image token (r, c) share one position embedding. With a parallel answer, the
query's mask codes are not fed to the model: each is replaced by a placeholder, the query image's
code at the same cell (the model tells them apart by their routing attribute, see
ModelConfig.attribute_embedding), and the hidden state *at* placeholder i predicts mask code i.
`targets` keeps the next-token frame of `loss_weights` (targets[t] is predicted by the hidden
state at t - 1), so for a parallel span starting at s, targets[s + 1 + i] = mask code i
(the [EOC] after the span included), and the model answers every code of the mask in one
forward pass over the prompt and the placeholders (`PackedSequence.parallel_span`).

The sequence and batch types, and `collate`, are in unicl/batch.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch

from unicl.attributes import ROLES, AttributeTable
from unicl.batch import PackedSequence
from unicl.generation_steps import BOI, BOT, EOC, PAD, plan_generation
from unicl.tasks.prompt import Episode, Role, Segment
from unicl.vocab import SPECIAL_SPAN, Vocabulary

#: tokenizer modalities laid out as a grid of codes opened by [BOI]
GRID_MODALITIES = ("image", "mask")


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


class _Grid(NamedTuple):
    """A pair with a grid answer (a mask): where its runs are in the episode's run list."""

    image: int  # the pair's input image run
    answer: int  # its answer run (the placeholders of a parallel answer)
    given: int | None  # the given mask run behind the placeholders (parallel answers)
    is_query: bool


@dataclasses.dataclass
class _Layout:
    """An episode's runs while packing (see `Packer._layout`)."""

    runs: list[_Run] = dataclasses.field(default_factory=list)
    pair_starts: list[int] = dataclasses.field(default_factory=list)
    grids: list[_Grid] = dataclasses.field(default_factory=list)
    gen_run: int = 0  # the first run of the query's answer
    query_lengths: list[int] = dataclasses.field(default_factory=list)  # tokens per segment
    budget: int = 0  # free text tokens generation may produce (the stop token included)


def image_pair_length(image_tokens: int) -> int:
    """Tokens of an image pair, `[BOI] n codes [BOI] n codes [EOC]`: what padded pairs fill."""
    return 2 * (image_tokens + 1) + 1


def _check_unanswered(task: str, pair: Sequence[Segment], index: int, start: int) -> None:
    """Only the query's answer (its outputs from the generation start) may be unanswered."""
    for k, segment in enumerate(pair):
        if not segment.answered and (k < start or segment.role != "output"):
            where = "a demonstration" if start == len(pair) else "the query's prompt"
            raise ValueError(
                f"{task} episode: pair {index}, segment {k} ({segment.modality}) has no payload "
                f"and no ids; only the query's answer may be left to the model, not {where}"
            )


class Packer:
    """Episodes -> PackedSequences for one vocabulary and one set of tasks.

    `max_positions`: the model's position budget (None = unchecked); a longer
    sequence is an error that says how to fit it. `input_image_weight`: per task
    name, the loss weight of input image codes (default 0). `first_answer_weight`: per task
    name, the factor on the loss weights of the first pair of an episode with more than one
    pair and no prefix (its answer follows no demonstration and no category text; default 1).
    """

    def __init__(
        self,
        vocab: Vocabulary,
        task_names: Sequence[str],
        max_positions: int | None = None,
        input_image_weight: Mapping[str, float] | None = None,
        max_text_tokens: int = 256,
        first_answer_weight: Mapping[str, float] | None = None,
    ) -> None:
        self.vocab = vocab
        self.table = AttributeTable(task_names, vocab.spans)
        self.max_positions = max_positions
        self.input_image_weight = dict(input_image_weight or {})
        self.first_answer_weight = dict(first_answer_weight or {})
        self.max_text_tokens = max_text_tokens
        self._special_span = vocab.spans.index(SPECIAL_SPAN)
        # grid spans: images, and masks coded on an image's token grid, each opened by [BOI]
        self._image_spans = {
            name
            for name, tok in vocab.tokenizers.items()
            if getattr(tok, "modality", "") in GRID_MODALITIES
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

    def local_ids(self, segment: Segment) -> np.ndarray:
        """(n,) the tokenizer's own ids of `segment` (what `Segment.ids` holds)."""
        return self._encode(segment) - self.vocab.ranges[segment.modality].start

    def _tag(self, name: str, role: Role) -> _Run:
        # tags opening or closing an output segment are predicted (and weighted) like it
        weight = 1.0 if role == "output" else 0.0
        return _Run(np.array([self.vocab[name]], np.int64), self._special_span, role, weight)

    def _segment_run(self, segment: Segment, task: str) -> _Run:
        # an unanswered segment (a user's query's answer) has no tokens to give
        ids = self._encode(segment) if segment.answered else np.zeros(0, np.int64)
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
        """Lay out `episode` as one token sequence (see the module docstring).

        A query whose answer is unanswered (a user's query, `Segment.answered`) is packed up to
        its generation start only: the prompt, plus the placeholders of a parallel answer.
        """
        task = episode.task
        self.table.task_index(task)  # unknown task -> error naming the configured ones
        if not episode.pairs:
            raise ValueError(f"{task} episode has no pairs (a query pair is required)")
        layout = self._layout(episode)
        runs = layout.runs
        lengths = np.array([len(r.ids) for r in runs])
        total = int(lengths.sum())
        grids = layout.grids
        positions = self._positions(runs, grids if episode.aligned_positions else [])  # (T,)
        if self.max_positions is not None and int(positions.max()) >= self.max_positions:
            self._check_budget(episode, total, layout.pair_starts)
        input_ids = torch.from_numpy(np.concatenate([r.ids for r in runs]))  # (T,)
        span = np.repeat([r.span for r in runs], lengths)  # (T,)
        role = np.repeat([ROLES[r.role] for r in runs], lengths)  # (T,)
        weights = np.repeat(np.array([r.weight for r in runs], np.float32), lengths)  # (T,)
        weights[0] = 0.0  # nothing predicts the first token
        base = self.table.task_index(task) * len(self.table.spans)
        prefix_length = int(lengths[: layout.gen_run].sum())
        targets, parallel_span = self._parallel_targets(input_ids, weights, lengths, grids)
        first = self.first_answer_weight.get(task, 1.0)
        if first != 1.0 and len(layout.pair_starts) > 1 and not episode.prefix:
            weights[layout.pair_starts[0] : layout.pair_starts[1]] *= first
        query_end = total
        while query_end > prefix_length and int(input_ids[query_end - 1]) == self.vocab.pad_id:
            query_end -= 1
        return PackedSequence(
            task=task,
            category=episode.category,
            input_ids=input_ids,
            attributes=torch.from_numpy((base + span) * 2 + role),  # (T,)
            positions=positions,
            loss_weights=torch.from_numpy(weights),
            pair_starts=layout.pair_starts,
            query_end=query_end,
            prefix_length=prefix_length,
            generation=self._generation_steps(episode, layout, positions, prefix_length),
            pad_id=self.vocab.pad_id,
            pad_attribute=(base + self._special_span) * 2,
            meta=episode.meta,
            targets=targets,
            parallel_span=parallel_span,
        )

    def _layout(self, episode: Episode) -> _Layout:
        """The runs of every pair, where each pair starts and where generation starts."""
        task = episode.task
        layout = _Layout()
        if episode.prefix:
            layout.runs += self._pair_runs(episode.prefix, task)[0]
        last = len(episode.pairs) - 1
        for index, pair in enumerate(episode.pairs):
            if not pair:
                raise ValueError(f"{task} episode: pair {index} has no segments")
            start = episode.generation_start() if index == last else len(pair)
            _check_unanswered(task, pair, index, start)
            layout.pair_starts.append(sum(len(r.ids) for r in layout.runs))
            pair_runs, content, grid = self._pair_layout(episode, pair, index)
            offset = len(layout.runs)
            if grid is not None:
                given = None if grid.given is None else offset + grid.given
                layout.grids.append(
                    _Grid(offset + grid.image, offset + grid.answer, given, index == last)
                )
            if index == last:
                # the prompt ends right before the first generated segment's own tokens:
                # the [BOI]/[BOT] that opens it is part of the prompt
                layout.gen_run = offset + content[start]
                layout.query_lengths = [len(pair_runs[i].ids) for i in content]
                layout.budget = self._budget(episode, pair_runs, content[start])
                if not all(s.answered for s in pair[start:]):
                    keep = content[start] + (1 if episode.parallel and grid else 0)
                    pair_runs = pair_runs[:keep]
            layout.runs += pair_runs
        if episode.parallel and not any(g.is_query for g in layout.grids):
            raise ValueError(
                f"{task} episode: a parallel answer needs an output grid segment (a mask) of "
                f"as many tokens as the query's input image"
            )
        return layout

    def _pair_layout(
        self, episode: Episode, pair: Sequence[Segment], index: int
    ) -> tuple[list[_Run], list[int], _Grid | None]:
        """One pair's runs ([EOC] and padding included), the run of each of its segments, and
        where its grid answer is, if it has one (`is_query` left False)."""
        task = episode.task
        pair_runs, content = self._pair_runs(pair, task)
        grid = self._grid_runs(pair, content)
        if grid is not None:
            image, answer = grid
            segment = pair[content.index(answer)]
            if not segment.answered:
                # a user's query: its unknown mask, as many codes as the mask tokenizer gives
                tok = self.vocab.tokenizers[segment.modality]
                n = getattr(tok, "codes_per_image", None) or len(pair_runs[image].ids)
                first = self.vocab.ranges[segment.modality].start
                pair_runs[answer].ids = np.full(int(n), first, np.int64)
        given = None
        if grid is not None and episode.parallel:
            given = self._insert_placeholders(pair_runs, *grid, task)
            content = [c + 2 if c > grid[1] else c for c in content]
        pair_runs.append(self._tag(EOC, pair[-1].role))
        if episode.pad_pairs:
            pair_runs += self._padding(pair_runs, task, index)
        return pair_runs, content, None if grid is None else _Grid(*grid, given, False)

    def _budget(self, episode: Episode, pair_runs: list[_Run], gen_run: int) -> int:
        """Tokens a free text step may generate: the padded pair's rest, else max_text_tokens."""
        if not episode.pad_pairs:
            return self.max_text_tokens
        images = [r for r in pair_runs if r.span in self._image_span_ids]
        target = image_pair_length(len(images[0].ids)) if images else 0
        return max(1, target - sum(len(r.ids) for r in pair_runs[:gen_run]))

    @staticmethod
    def _parallel_targets(
        input_ids: torch.Tensor, weights: np.ndarray, lengths: np.ndarray, grids: list[_Grid]
    ) -> tuple[torch.Tensor | None, tuple[int, int] | None]:
        """The shifted targets of parallel answers (weights are set in place) and the query's
        placeholder span."""
        targets, parallel_span = None, None
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        for _, answer_run, given_run, is_query in grids:
            if given_run is None:
                continue
            # the hidden state at placeholder i predicts mask code i: in the next-token frame
            # of `weights`, code i is the target at b + 1 + i (the [BOI] after the
            # placeholders takes the last code); the [BOI] before them predicts nothing
            b, n = int(starts[answer_run]), int(lengths[answer_run])
            if is_query:
                parallel_span = (b, n)
            if given_run >= len(lengths):  # a prompt: the query's mask is not there
                continue
            g = int(starts[given_run])
            targets = input_ids.clone() if targets is None else targets
            targets[b + 1 : b + n + 1] = input_ids[g : g + n]
            weights[b + 1 : b + n + 1] = 1.0
            weights[b] = 0.0
        return targets, parallel_span

    def _grid_runs(self, pair: Sequence[Segment], content: list[int]) -> tuple[int, int] | None:
        """(run of the pair's input image, run of its output grid segment) when both exist."""
        images = [i for i, seg in enumerate(pair) if self.is_image(seg) and seg.role == "input"]
        outputs = [i for i, seg in enumerate(pair) if self.is_image(seg) and seg.role == "output"]
        if not images or not outputs:
            return None
        return content[images[0]], content[outputs[0]]

    def _insert_placeholders(self, runs: list[_Run], image: int, answer: int, task: str) -> int:
        """Parallel layout of a pair, in place: `[BOI] image [BOI] placeholders [BOI] mask [EOC]`.

        The answer run becomes the placeholders (the image's codes in the mask's span, output
        role); the true mask follows as an input behind its own [BOI], so that later pairs see
        it. Returns the index of that given-mask run.
        """
        mask = runs[answer]
        if len(mask.ids) != len(runs[image].ids):
            raise ValueError(
                f"{task} episode: a parallel answer needs one mask code per image code, got "
                f"{len(mask.ids)} and {len(runs[image].ids)}"
            )
        placeholders = _Run(runs[image].ids.copy(), mask.span, "output", 0.0)
        given = _Run(mask.ids, mask.span, "input", 0.0)
        runs[answer : answer + 1] = [placeholders, self._tag(BOI, "input"), given]
        return answer + 2

    @staticmethod
    def _positions(runs: list[_Run], grids: list[_Grid]) -> torch.Tensor:
        """(T,) positions: in order, except that aligned grid runs reuse their image's positions
        (and take none of their own)."""
        aligned = {}
        for image, answer, given, _ in grids:
            aligned[answer] = image
            if given is not None:
                aligned[given] = image
        spans: list[np.ndarray] = []
        counter = 0
        for i, run in enumerate(runs):
            if i in aligned and len(run.ids) == len(runs[aligned[i]].ids):
                spans.append(spans[aligned[i]])
            elif i in aligned:
                raise ValueError(
                    f"aligned positions need one mask code per image code, got {len(run.ids)} "
                    f"and {len(runs[aligned[i]].ids)}"
                )
            else:
                spans.append(np.arange(counter, counter + len(run.ids)))
                counter += len(run.ids)
        return torch.from_numpy(np.concatenate(spans).astype(np.int64))

    def _padding(self, runs: list[_Run], task: str, index: int) -> list[_Run]:
        """[PAD] runs that bring a pair to the image-pair length 2n + 3."""
        images = [r for r in runs if r.span in self._image_span_ids]
        if not images:
            raise ValueError(f"{task} pair {index}: pad_pairs needs an image in every pair")
        target = image_pair_length(len(images[0].ids))
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
        self, episode: Episode, layout: _Layout, positions: torch.Tensor, prefix_length: int
    ) -> list:
        """The steps that generate the query's answer (unicl/generation_steps.py).

        Free text never runs past the model's positions; the codes of a mask aligned with its
        image (not a parallel answer) rewind to the image's first position.
        """
        start = episode.generation_start()
        budget = layout.budget
        if self.max_positions is not None:
            budget = min(budget, max(1, self.max_positions - prefix_length))
        rewind = 0
        query = [g for g in layout.grids if g.is_query]
        if episode.aligned_positions and not episode.parallel and query:
            image_start = sum(len(r.ids) for r in layout.runs[: query[0].image])
            rewind = int(positions[prefix_length - 1]) + 1 - int(positions[image_start])
        return plan_generation(
            episode.query[start:], layout.query_lengths[start:], self.is_image, budget, rewind
        )
