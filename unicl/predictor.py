"""The task-generic predictor: prompts in, answers out, for any registered task.

`Predictor` holds a loaded model (config, vocabulary, task plugins, packer, decoder) and
answers in-context prompts end to end (arXiv 2312.02520, tasks and sequence layout):

    user items (tasks/user.py)  --task.user_record, task views-->  Shots
      --task.episode-->  Episodes  --Packer.pack-->  prompts
      --generation (unicl/generate.py) or one parallel pass-->  tokens / code distributions
      --task.postprocess / task.postprocess_distribution-->  the task's answer

Nothing in it knows a task by name: the task builds its prompts (its evaluation view for
demonstrations, `query_view` for a user's query), and turns tokens back into answers. A
user's query is *unanswered*: only its prompt is packed, never a stand-in answer. The
demonstrations' codes (of the arrays a task names in `cache_arrays`: the built-in tasks'
images and masks) are computed once per demonstration set and reused for every query
(`Predictor.prompts`). A task with parallel answers (segmentation with
`mask_decoding: parallel`) skips generation: one forward pass over the prompt and the
query's placeholders gives the code distribution at every cell (`Predictor.parallel_probs`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unicl.config import UniclConfig, from_dict
from unicl.devices import pick_device, pick_dtype
from unicl.generate import (
    Prompt,
    Sampling,
    SegmentSpec,
    generate,
    left_padded,
    prefill_prefix,
    sampling_options,
)
from unicl.model import build_decoder
from unicl.model_files import ModelFiles
from unicl.plugins import import_plugins
from unicl.streams import build_packer, build_tasks
from unicl.tasks.prompt import Episode, Segment, Shot
from unicl.tasks.user import UserItem
from unicl.tokenizers.base import TOKENIZER_FILE, build_tokenizer, load_tokenizer
from unicl.vocab import Vocabulary

#: image ids of user images (demonstrations count up from 1, queries from here)
QUERY_ID_BASE = 1_000_000_000


@dataclasses.dataclass
class Prediction:
    """One query's answer from one prompt."""

    value: Any  # the task's answer (tasks/segmentation.py MaskAnswer, CaptionAnswer, ...)
    tokens: np.ndarray  # (G,) generated global ids (a parallel answer: the argmax codes)
    probs: np.ndarray  # (G,) probability of each of them


def _load_tokenizer(directory: Path, device: torch.device) -> Any:
    """A saved tokenizer; one that runs a network (VQ-GAN) runs it on the model's device."""
    spec = json.loads((directory / TOKENIZER_FILE).read_text())
    options = dict(spec.get("options", {}))
    if "device" not in options:
        return load_tokenizer(directory)
    options["device"] = str(device)
    return build_tokenizer({"name": spec["name"], **options}, base_dir=directory)


def _on_device(tokenizer: Any, device: torch.device) -> Any:
    """`tokenizer` rebuilt to run its network on `device` (if it has a device option)."""
    options = tokenizer.options()
    if "device" not in options or options["device"] == str(device):
        return tokenizer
    return build_tokenizer({"name": tokenizer.name, **options, "device": str(device)})


class Predictor:
    """A loaded model that turns prompts of any of its tasks into answers (module docstring)."""

    def __init__(self, cfg: Any, vocab: Any, model: torch.nn.Module, device: torch.device) -> None:
        self.cfg = cfg
        self.vocab = vocab
        self.model = model
        self.device = device
        self.tasks = build_tasks(cfg, vocab)
        #: the exported directory or run the weights came from (None for an in-memory model)
        self.model_dir: Path | None = None
        #: which weights (run checkpoint or export file; unicl/model_files.py ModelFiles)
        self.model_id: str | None = None
        self.packer = build_packer(cfg, vocab, self.tasks)

    @classmethod
    def from_files(
        cls,
        files: ModelFiles,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        allow_plugins: bool = False,
    ) -> Predictor:
        """Build from what `read_model` read (an export or a run's latest checkpoint).

        `allow_plugins`: import the plugin modules the model's config names (unicl/plugins.py).
        """
        device, dtype = pick_device(device), pick_dtype(dtype)
        if device.type == "cpu":
            torch.set_flush_denormal(True)  # denormals make CPU matmuls ~100x slower
        cfg = from_dict(UniclConfig, files.config)
        import_plugins(cfg.plugins, allow=allow_plugins, source=files.source)
        if files.tokenizer_dirs is None:  # a run: tokenizers as its config builds them
            tokenizers = [_on_device(build_tokenizer(spec), device) for spec in cfg.tokenizers]
        else:
            tokenizers = [
                _load_tokenizer(files.tokenizer_dirs[str(spec["name"])], device)
                for spec in cfg.tokenizers
            ]
        vocab = Vocabulary(tokenizers, cfg.vocab)
        model = build_decoder(cfg.model, vocab, cfg.tasks)
        missing, unexpected = model.load_state_dict(files.state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{files.source}: the weights do not match the model its config describes: "
                f"missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
            )
        predictor = cls(cfg, vocab, model.to(device=device, dtype=dtype).eval(), device)
        predictor.model_dir = files.source
        predictor.model_id = files.identity
        return predictor

    def describe(self) -> str:
        params = sum(p.numel() for p in self.model.parameters())
        tasks = ", ".join(sorted(self.tasks))
        return f"{self.cfg.name}: {params / 1e6:.1f}M parameters, tasks {tasks}, on {self.device}"

    def require_task(self, name: str) -> Any:
        """The task `name`, or a ValueError naming the tasks this model was trained for."""
        if name not in self.tasks:
            raise ValueError(
                f"this model was not trained for {name}; its tasks: {', '.join(sorted(self.tasks))}"
            )
        return self.tasks[name]

    def sampling(self, options: dict[str, Any]) -> dict[str, Any]:
        """Checked sampling keyword arguments (unicl/generate.py `sampling_options`)."""
        return sampling_options(options)

    # ---- prompts ------------------------------------------------------------- #

    def prompts(
        self,
        task_name: str,
        queries: Sequence[UserItem],
        demos: Sequence[UserItem],
        category: str | None,
    ) -> list[Episode]:
        """One episode per query, all with the same demonstrations (encoded once).

        Demonstrations are seen through the task's evaluation view, queries through its
        `query_view`; without a category the word "object" stands in for it.
        """
        task = self.require_task(task_name)
        name = category or "object"
        shots = []
        for j, demo in enumerate(demos):
            record = task.user_record(demo, j + 1, name)
            shots.append(self._encoded(task, Shot(record, task.eval_view(record))))
        episodes = []
        for i, query in enumerate(queries):
            record = task.user_record(query, QUERY_ID_BASE + i, name)
            shot = Shot(record, task.query_view(record))
            episodes.append(task.episode(shot, shots, name, category_text=category is not None))
        return episodes

    def _encoded(self, task: Any, shot: Shot) -> Shot:
        """`shot` with the codes of its cached arrays (the image, the mask) computed once."""
        codes = {}
        for name, (kind, array) in task.cache_arrays(shot).items():
            tokenizer = task.cache_tokenizer(name)
            codes[name] = self.packer.local_ids(Segment(tokenizer, array, kind=kind))
        return dataclasses.replace(shot, codes=codes)

    # ---- answers ------------------------------------------------------------- #

    def answer(self, episodes: Sequence[Episode], options: dict[str, Any]) -> list[Prediction]:
        """The answer of every episode (all of one task), post-processed by the task."""
        if not episodes:
            return []
        task = self.require_task(episodes[0].task)
        if episodes[0].parallel:
            if (options.get("num_beams") or 1) > 1:
                raise ValueError(
                    f"num_beams: this model reads its {task.name} answers out of one parallel "
                    "pass (mask_decoding: parallel); beam search applies to generated answers"
                )
            start = self.vocab.ranges[_answer_tokenizer(episodes[0])].start
            out = []
            for episode, probs in zip(episodes, self.parallel_probs(episodes)):
                best, codes = probs.max(-1)  # (n,), (n,)
                value = task.postprocess_distribution(episode, probs, self.vocab)
                out.append(Prediction(value, (codes + start).numpy(), best.numpy()))
            return out
        return [
            Prediction(task.postprocess(episode, tokens, self.vocab), tokens, probs)
            for episode, (tokens, probs) in zip(episodes, self.generate(episodes, options))
        ]

    @torch.no_grad()
    def parallel_probs(self, episodes: Sequence[Episode], batch_size: int = 16) -> list:
        """Parallel answers: per episode, (n, K) probabilities of its n answer codes.

        One forward pass over the prompt and the placeholder span (unicl/packer.py,
        "Parallel answers"); the hidden state at placeholder i scores code i against the
        answer tokenizer's K codes only. Episodes that share their start (one demonstration
        set) run it once: its keys and values are computed with batch 1 and every query's
        own tokens attend to them.
        """
        codes = self.vocab.ranges[_answer_tokenizer(episodes[0])]
        head = self.model.head_weight[codes.start : codes.stop]  # (K, D)
        packed = [self.packer.pack(e) for e in episodes]
        out: list[torch.Tensor] = []
        for i in range(0, len(packed), batch_size):
            chunk = packed[i : i + batch_size]
            prompts = [
                Prompt(*(t[: s + n] for t in (p.input_ids, p.attributes, p.positions)))
                for p, (s, n) in ((p, p.parallel_span) for p in chunk)
            ]
            hidden = self._prompt_hidden(prompts)  # (B, T, D), every prompt ending at T
            for row, p in enumerate(chunk):
                n = p.parallel_span[1]
                logits = hidden[row, hidden.shape[1] - n :] @ head.T  # (n, K)
                out.append(logits.float().softmax(-1).cpu())
        return out

    def _prompt_hidden(self, prompts: Sequence[Prompt]) -> torch.Tensor:
        """Final hidden states of left-padded prompts (B, T, D), a shared start run once."""
        shared = _common_prefix(prompts) if len(prompts) > 1 else 0
        cache = None
        if shared > 0:
            prefix = prefill_prefix(self.model, Prompt(*(t[:shared] for t in prompts[0])))
            prompts = [Prompt(*(t[shared:] for t in p)) for p in prompts]
        ids, attrs, pos, mask = left_padded(prompts, self.device)
        if shared > 0:
            cache = prefix.cache.expand(len(prompts), prefix.cache.length + ids.shape[1])
        out = self.model(ids, attrs, pos, attention_mask=mask, kv_cache=cache, return_hidden=True)
        return out.hidden

    def generate(
        self, episodes: Sequence[Episode], options: dict[str, Any]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Generate the answer of every episode: [(global ids (G,), probabilities (G,))].

        The longest token prefix that all episodes share (the category text and the
        demonstrations, when they share a demonstration set) is prefilled once and
        its keys/values are reused by every query (unicl/generate.py).
        """
        if not episodes:
            return []
        packed = [self.packer.pack(e) for e in episodes]
        prompts = [
            Prompt(*(t[: p.prefix_length] for t in (p.input_ids, p.attributes, p.positions)))
            for p in packed
        ]
        shared = _common_prefix(prompts)
        prefix = None
        if shared > 0:
            prefix = Prompt(*(t[:shared] for t in prompts[0]))
            prompts = [Prompt(*(t[shared:] for t in p)) for p in prompts]
        sampling = decoding(options, self.require_task(episodes[0].task))
        generator = None
        if sampling.temperature > 0:
            generator = torch.Generator(self.device).manual_seed(int(options["seed"]))
        out = generate(
            self.model,
            prompts,
            self._segment_specs(packed, options),
            self.packer.generation_attribute_table(episodes[0].task),
            prefix=prefix,
            sampling=sampling,
            generator=generator,
        )
        return [(t.numpy(), p.float().numpy()) for t, p in zip(out.tokens, out.probs)]

    def _segment_specs(self, packed: Sequence[Any], options: dict[str, Any]) -> list[SegmentSpec]:
        """The generation steps of a batch of packed prompts as generate()'s segment specs.

        The episodes of a batch share their steps; a free step takes the largest budget among
        them (padded caption pairs leave each episode its own), capped by `max_tokens`.
        """
        segments = []
        for k, step in enumerate(packed[0].generation):
            allowed = step.allowed_mask(self.vocab)
            if step.length is not None:
                segments.append(SegmentSpec(allowed, length=step.length, rewind=step.rewind))
                continue
            stop = [self.vocab[step.stop]] if step.stop else []
            limit = max(p.generation[k].max_length for p in packed)
            if options.get("max_tokens") is not None:
                limit = min(limit, options["max_tokens"])
            segments.append(SegmentSpec(allowed, max_length=limit, stop_ids=stop))
        return segments


def decoding(options: dict[str, Any], task: Any) -> Sampling:
    """Checked sampling options -> `Sampling`; beam options left None take the task's.

    A task's beams (`Task.num_beams`) are its default for greedy decoding: a temperature
    above 0 samples one answer instead.
    """
    beams = options["num_beams"]
    if beams is None:
        beams = task.num_beams if options["temperature"] == 0 else 1
    penalty = options["length_penalty"]
    if penalty is None:
        penalty = task.length_penalty
    return Sampling(options["temperature"], options["top_k"], options["top_p"], beams, penalty)


def _answer_tokenizer(episode: Episode) -> str:
    """The tokenizer of the query's first generated segment (a parallel answer's codes)."""
    return episode.query[episode.generation_start()].modality


def _common_prefix(prompts: Sequence[Prompt]) -> int:
    """Tokens every prompt shares at its start, leaving each at least one token of its own."""
    first = prompts[0]
    n = min(p.input_ids.numel() for p in prompts) - 1
    for p in prompts[1:]:
        same = (p.input_ids[:n] == first.input_ids[:n]) & (p.attributes[:n] == first.attributes[:n])
        differs = (~same).nonzero()
        if differs.numel():
            n = int(differs[0, 0])
    return max(n, 0)
