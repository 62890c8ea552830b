"""How the query's answer is generated: the steps the packer plans for an episode.

The answer of a query is generated segment by segment from its generation start: an image
(a mask) is an exact number of codes, a run of text segments is free text up to the tag that
opens what follows ([EOC] at the end of the pair). `plan_generation` derives these steps from
the query's segments; unicl/predictor.py turns them into generate()'s segment specs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from unicl.tasks.prompt import Role, Segment
from unicl.vocab import SPECIAL_SPAN, Vocabulary

#: the layout tags (unicl/packer.py): an image opens with [BOI], a text block with [BOT], a
#: pair closes with [EOC], padding is [PAD]
BOI, BOT, EOC, PAD = "[BOI]", "[BOT]", "[EOC]", "[PAD]"


@dataclasses.dataclass
class GenerationStep:
    """One stretch of the query's answer that generation produces.

    Either exactly `length` tokens (an image: n codes; a forced tag: 1), or free
    tokens until `stop` is produced (included) or `max_length` tokens are reached.
    Allowed ids: the ids of `spans` plus the special tokens/tags in `tokens`.
    `rewind` > 0: the step's tokens take the positions that start `rewind` before the
    next one and do not advance it (a mask whose tokens share its image's positions,
    `Episode.aligned_positions`).
    """

    spans: tuple[str, ...]
    tokens: tuple[str, ...]
    role: Role
    length: int | None = None
    stop: str | None = None
    max_length: int = 0
    rewind: int = 0

    def allowed_mask(self, vocab: Vocabulary) -> torch.Tensor:
        """(V,) bool over the embedding rows: the ids this step may produce."""
        return vocab.allowed_mask(self.spans, self.tokens)


def plan_generation(
    segments: Sequence[Segment],
    lengths: Sequence[int],
    is_image: Callable[[Segment], bool],
    budget: int,
    rewind: int = 0,
) -> list[GenerationStep]:
    """The steps that generate `segments` (the query's, from its generation start).

    Images are exact-length steps of `lengths[i]` tokens (a forced [BOI] opens all but the
    first; the first takes `rewind`); a run of text segments is one free step over their
    spans and tags that ends with the tag opening what follows ([EOC] at the end of the
    pair), of at most `budget` tokens, the stop token included.
    """
    steps: list[GenerationStep] = []
    index = 0
    while index < len(segments):
        segment = segments[index]
        if is_image(segment):
            if index > 0:
                steps.append(GenerationStep((), (BOI,), segment.role, length=1))
            first = rewind if not steps else 0
            steps.append(
                GenerationStep(
                    (segment.modality,), (), segment.role, length=lengths[index], rewind=first
                )
            )
            index += 1
            continue
        text = []
        while index < len(segments) and not is_image(segments[index]):
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
