"""Prompt -> answer machinery behind the public API and `unicl eval`.

`Engine` holds a loaded model directory (config, vocabulary, task plugins,
packer, decoder) and runs in-context prompts end to end (arXiv 2312.02520,
tasks and sequence layout):

    demonstrations + queries (arrays)  ->  records seen through views (tasks/base.py Shot)
      -> Task.episode -> Packer.pack -> shared-prefix generation (unicl/generate.py)
      -> Task.postprocess -> mask at the query's resolution / caption text

A segmentation task with parallel mask answers skips generation: one forward pass over the
prompt and the query's placeholders gives the mask codes' distribution at every cell
(`Engine.mask_code_probs`), which becomes a soft map at the query's resolution, thresholded once.

User images are wrapped as in-memory records (unicl/inputs.py) so the task plugins lay them out
exactly as they lay out dataset records in training and evaluation. Views:
demonstrations use the task's evaluation view (object-centred crops from their
mask / box, as in the evaluation episodes); a segmentation query has no mask to
centre on, so its view is the whole image (a square crop around it, padded).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unicl.inputs import ImageItem, caption_record, segmentation_record
from unicl.model_files import ModelFiles, write_export

#: decoded mask images are thresholded at this grey level (our choice; the paper, arXiv
#: 2312.02520, does not say how a decoded mask image becomes a binary mask)
MASK_THRESHOLD = 127.0
#: image ids of user images (demonstrations count up from 1, queries from here)
QUERY_ID_BASE = 1_000_000_000


@dataclasses.dataclass
class GeneratedAnswer:
    """One query's answer from one prompt."""

    tokens: np.ndarray  # (G,) generated global ids
    probs: np.ndarray  # (G,) probability of each generated id under the sampling distribution
    mask_image: np.ndarray | None = None  # (H, W) float32 grey 0-255 at the query's resolution
    mask: np.ndarray | None = None  # (H, W) bool
    text: str | None = None


# --------------------------------------------------------------------------- #
# model directories
# --------------------------------------------------------------------------- #


@contextlib.contextmanager
def cpu_threads(n: int | None):
    """Run a block with `n` torch intra-op threads (None: unchanged), then restore.

    Generation on CPU is a long series of tiny matmuls (one token per step); on a
    busy machine, several OpenMP threads per matmul wait on each other far longer
    than the matmul takes (docs/BENCHMARKS.md "Inference API": one thread was ~10x
    faster on 2 loaded cores), so the demo evaluates with one thread.
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _load_tokenizer(directory: Path, device: torch.device) -> Any:
    """A saved tokenizer; one that runs a network (VQ-GAN) runs it on the model's device."""
    import json

    from unicl.tokenizers.base import TOKENIZER_FILE, build_tokenizer, load_tokenizer

    spec = json.loads((directory / TOKENIZER_FILE).read_text())
    options = dict(spec.get("options", {}))
    if "device" not in options:
        return load_tokenizer(directory)
    options["device"] = str(device)
    return build_tokenizer({"name": spec["name"], **options}, base_dir=directory)


def _on_device(tokenizer: Any, device: torch.device) -> Any:
    """`tokenizer` rebuilt to run its network on `device` (if it has a device option)."""
    from unicl.tokenizers.base import build_tokenizer

    options = tokenizer.options()
    if "device" not in options or options["device"] == str(device):
        return tokenizer
    return build_tokenizer({"name": tokenizer.name, **options, "device": str(device)})


def pick_device(device: str | torch.device | None) -> torch.device:
    """`device=` as a torch device this machine has; default CUDA when available, else CPU.

    An unknown name, or CUDA / MPS where there is none, is a ValueError naming the
    argument and the devices there are.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(
            f"device: expected a device name such as 'cpu' or 'cuda:0', or a torch.device, "
            f"got {device!r}"
        )
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    valid = ["cpu", *(["cuda"] if cuda else []), *(f"cuda:{i}" for i in range(cuda))]
    valid += ["mps"] if mps else []
    there = f"devices here: {', '.join(valid)}"
    try:
        parsed = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device: {device!r} is not a device name; {there}") from err
    if parsed.type == "cuda" and not cuda:
        raise ValueError(f"device: {device!r} needs CUDA, which this machine lacks; {there}")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= cuda:
        raise ValueError(f"device: {device!r} does not exist ({cuda} CUDA devices); {there}")
    if parsed.type == "mps" and not mps:
        raise ValueError(f"device: {device!r} needs Apple's MPS, which this machine lacks; {there}")
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device: {device!r} is not supported; {there}")
    return parsed


def pick_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """`dtype=` as the parameters' floating dtype; default float32.

    Names as torch spells them ("bfloat16", "torch.float16", "half"); anything else,
    an integer dtype included, is an error naming the argument and the valid names.
    """
    names = {
        "float32": torch.float32,
        "float": torch.float32,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
        "half": torch.float16,
        "float64": torch.float64,
        "double": torch.float64,
    }
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) and dtype in names.values():
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in names:
        return names[dtype.removeprefix("torch.")]
    valid = f"valid: {', '.join(names)} (as names or torch dtypes)"
    if not isinstance(dtype, (str, torch.dtype)):
        raise TypeError(f"dtype: expected a dtype name or a torch.dtype, got {dtype!r}; {valid}")
    raise ValueError(f"dtype: {dtype!r} is not a parameter dtype; {valid}")


def unapply_grey(grey: np.ndarray, view: Any, height: int, width: int) -> np.ndarray:
    """A (s, s) float map in view coordinates -> (height, width) float32 on the original image.

    The float counterpart of `View.unapply_mask` (bilinear instead of nearest), so
    that maps from several prompts can be averaged before thresholding; outside
    the crop the map is 0 (background).
    """
    from PIL import Image

    grey = np.asarray(grey, np.float32)
    if view.flip:
        grey = grey[:, ::-1]
    x0, y0, x1, y1 = (int(v) for v in view.crop)
    side = Image.fromarray(np.ascontiguousarray(grey), mode="F").resize(
        (x1 - x0, y1 - y0), Image.Resampling.BILINEAR
    )
    full = np.asarray(side, np.float32)  # (side, side)
    out = np.zeros((height, width), np.float32)
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if ix1 > ix0 and iy1 > iy0:
        out[iy0:iy1, ix0:ix1] = full[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
    return out


class Engine:
    """A loaded model directory that turns prompts into answers (see the module docstring)."""

    def __init__(self, cfg: Any, vocab: Any, model: torch.nn.Module, device: torch.device) -> None:
        from unicl.data import build_packer, build_tasks

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
    ) -> Engine:
        """Build from what `read_model` read (an export or a run's latest checkpoint).

        `allow_plugins`: import the plugin modules the model's config names (unicl/plugins.py).
        """
        from unicl.config import UniclConfig, from_dict
        from unicl.model import build_model
        from unicl.plugins import import_plugins
        from unicl.sequence import num_attributes
        from unicl.tokenizers.base import build_tokenizer
        from unicl.vocab import Vocabulary

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
        model = build_model(
            cfg.model,
            vocab.embedding_size,
            num_attributes(vocab, sorted(cfg.tasks)),
            vocab.code_features() if cfg.model.code_features else None,
        )
        missing, unexpected = model.load_state_dict(files.state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{files.source}: the weights do not match the model its config describes: "
                f"missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
            )
        model = model.to(device=device, dtype=dtype).eval()
        engine = cls(cfg, vocab, model, device)
        engine.model_dir = files.source
        engine.model_id = files.identity
        return engine

    def describe(self) -> str:
        params = sum(p.numel() for p in self.model.parameters())
        tasks = ", ".join(sorted(self.tasks))
        return f"{self.cfg.name}: {params / 1e6:.1f}M parameters, tasks {tasks}, on {self.device}"

    def require_task(self, name: str) -> Any:
        if name not in self.tasks:
            raise ValueError(
                f"this model was not trained for {name}; its tasks: {', '.join(sorted(self.tasks))}"
            )
        return self.tasks[name]

    # ---- prompts ------------------------------------------------------------- #

    def sampling(self, options: dict[str, Any]) -> dict[str, Any]:
        """Check sampling keyword arguments (unicl/generate.py `sampling_options`).

        `max_tokens` caps free-length answers (captions; the stop tag included);
        None keeps the prompt layout's own limit.
        """
        from unicl.generate import sampling_options

        return sampling_options(options)

    def query_view(self, task: Any, height: int, width: int) -> Any:
        """A user query's view: the whole image padded to a square (no mask to centre on)."""
        from unicl.tasks.base import View
        from unicl.tasks.transforms import full_square_crop_box

        return View(full_square_crop_box(height, width), False, task.image_size)

    def segmentation_episodes(
        self, queries: Sequence[ImageItem], demos: Sequence[ImageItem], category: str | None
    ) -> list[Any]:
        """Episodes for user images: demos seen through evaluation views, queries whole."""
        from unicl.tasks.base import Shot

        task = self.tasks["segmentation"]
        name = category or "object"
        shots = []
        for j, demo in enumerate(demos):
            record = segmentation_record(demo, j + 1, name)
            shots.append(Shot(record, task.eval_view(record)))
        episodes = []
        for i, query in enumerate(queries):
            record = segmentation_record(query, QUERY_ID_BASE + i, name)
            shot = Shot(record, self.query_view(task, record.height, record.width))
            episodes.append(task.episode(shot, shots, name, category_text=category is not None))
        return episodes

    def caption_episodes(
        self, queries: Sequence[ImageItem], demos: Sequence[ImageItem], category: str | None
    ) -> list[Any]:
        """Episodes for user images: every image seen through the task's evaluation view.

        The captioning layout names the category in every pair; without one the
        word "object" stands in for it.
        """
        from unicl.tasks.base import Shot

        task = self.tasks["captioning"]
        name = category or "object"
        shots = []
        for j, demo in enumerate(demos):
            record = caption_record(demo, j + 1, name)
            shots.append(Shot(record, task.eval_view(record)))
        episodes = []
        for i, query in enumerate(queries):
            record = caption_record(dataclasses.replace(query, text="?"), QUERY_ID_BASE + i, name)
            shot = Shot(record, task.eval_view(record, query=True))
            episodes.append(task.episode(shot, shots, name, category_text=category is not None))
        return episodes

    def segment_batch(
        self,
        queries: Sequence[ImageItem],
        demos: Sequence[ImageItem],
        category: str | None,
        options: dict[str, Any],
    ) -> list[GeneratedAnswer]:
        """One demo set, many queries: one shared-prefix generation batch."""
        episodes = self.segmentation_episodes(queries, demos, category)
        return self.answer_segmentation(episodes, options)

    def caption_batch(
        self,
        queries: Sequence[ImageItem],
        demos: Sequence[ImageItem],
        category: str | None,
        options: dict[str, Any],
    ) -> list[GeneratedAnswer]:
        episodes = self.caption_episodes(queries, demos, category)
        return self.answer_captioning(episodes, options)

    def answer_segmentation(self, episodes: Sequence[Any], options: dict[str, Any]) -> list:
        """Episodes -> answers with the mask, its grey image and the generated tokens."""
        if episodes and episodes[0].parallel:
            return self.answer_parallel(episodes)
        task = self.tasks["segmentation"]
        tok = self.vocab.tokenizers[task.mask_tokenizer]
        span = self.vocab.ranges[task.mask_tokenizer]
        out = []
        for episode, (tokens, probs) in zip(episodes, self.generate(episodes, options)):
            mask = task.postprocess(episode, tokens, self.vocab)
            local = self.vocab.to_local(
                task.mask_tokenizer, [int(t) for t in tokens if int(t) in span]
            )
            if hasattr(tok, "decode_soft"):
                grey = 255.0 * tok.decode_soft(tok.one_hot(local))  # (s, s)
            else:
                grey = tok.decode(local).mean(axis=-1)  # (s, s) from the decoded (s, s, 3) image
            height, width = episode.meta["query_size"]
            grey = unapply_grey(grey, episode.meta["query_view"], height, width)
            out.append(GeneratedAnswer(tokens, probs, mask_image=grey, mask=mask))
        return out

    def mask_code_probs(self, episodes: Sequence[Any], batch_size: int = 16) -> list[torch.Tensor]:
        """Parallel answers: per episode, (n, K) probabilities of the n mask codes.

        One forward pass over the prompt and the placeholder span (unicl/sequence.py,
        "Parallel answers"); the hidden state at placeholder i scores mask code i against the
        mask tokenizer's K codes only.
        """
        from unicl.batch import collate

        task = self.tasks["segmentation"]
        codes = self.vocab.ranges[task.mask_tokenizer]
        head = self.model.head_weight[codes.start : codes.stop]  # (K, D)
        packed = [self.packer.pack(e) for e in episodes]
        out: list[torch.Tensor] = []
        for i in range(0, len(packed), batch_size):
            chunk = packed[i : i + batch_size]
            ends = [p.parallel_span[0] + p.parallel_span[1] for p in chunk]
            cut = [
                dataclasses.replace(
                    p,
                    input_ids=p.input_ids[:e],
                    attributes=p.attributes[:e],
                    positions=p.positions[:e],
                    loss_weights=p.loss_weights[:e],
                    targets=None,
                )
                for p, e in zip(chunk, ends)
            ]
            batch = collate(cut).to(self.device)
            with torch.no_grad():
                hidden = self.model(
                    batch.input_ids, batch.attributes, batch.positions, return_hidden=True
                ).hidden  # (B, T, D)
                for row, p in enumerate(chunk):
                    start, n = p.parallel_span
                    logits = hidden[row, start : start + n] @ head.T  # (n, K)
                    out.append(logits.float().softmax(-1).cpu())
        return out

    def answer_parallel(self, episodes: Sequence[Any]) -> list:
        """Parallel answers: code probabilities -> a soft map at the query's size -> mask.

        `mask_readout: soft` thresholds the expected foreground of each cell under the code
        distribution (the tokenizer's `decode_soft`); `argmax` decodes the most likely code.
        """
        task = self.tasks["segmentation"]
        tok = self.vocab.tokenizers[task.mask_tokenizer]
        start = self.vocab.ranges[task.mask_tokenizer].start
        out = []
        for episode, probs in zip(episodes, self.mask_code_probs(episodes)):
            best, codes = probs.max(-1)  # (n,), (n,)
            if task.mask_readout == "soft" and hasattr(tok, "decode_soft"):
                grey = 255.0 * tok.decode_soft(probs)
            elif hasattr(tok, "decode_soft"):
                grey = 255.0 * tok.decode_soft(tok.one_hot(codes))
            else:
                grey = tok.decode(codes).mean(axis=-1)  # (s, s) grey of the decoded image
            height, width = episode.meta["query_size"]
            grey = unapply_grey(grey, episode.meta["query_view"], height, width)
            tokens = (codes + start).numpy()
            out.append(
                GeneratedAnswer(
                    tokens, best.numpy(), mask_image=grey, mask=self.threshold_mask(grey)
                )
            )
        return out

    def answer_captioning(self, episodes: Sequence[Any], options: dict[str, Any]) -> list:
        task = self.tasks["captioning"]
        out = []
        for episode, (tokens, probs) in zip(episodes, self.generate(episodes, options)):
            answer = task.postprocess(episode, tokens, self.vocab)
            out.append(GeneratedAnswer(tokens, probs, text=answer.text))
        return out

    @staticmethod
    def threshold_mask(grey: np.ndarray) -> np.ndarray:
        """Mean decoded mask image -> bool mask (grey level > 127, our choice)."""
        return np.asarray(grey) > MASK_THRESHOLD

    # ---- generation ------------------------------------------------------------ #

    def generate(
        self, episodes: Sequence[Any], options: dict[str, Any]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Generate the answer of every episode: [(global ids (G,), probabilities (G,))].

        The longest token prefix that all episodes share (the category text and the
        demonstrations, when they share a demonstration set) is prefilled once and
        its keys/values are reused by every query (unicl/generate.py).
        """
        from unicl.generate import Prompt, Sampling, SegmentSpec, generate

        if not episodes:
            return []
        packed = [self.packer.pack(e) for e in episodes]
        prompts = [
            Prompt(
                p.input_ids[: p.prefix_length],
                p.attributes[: p.prefix_length],
                p.positions[: p.prefix_length],
            )
            for p in packed
        ]
        shared = _common_prefix(prompts)
        prefix = None
        if shared > 0:
            prefix = Prompt(*(t[:shared] for t in prompts[0]))
            prompts = [Prompt(*(t[shared:] for t in p)) for p in prompts]
        steps = packed[0].generation
        segments = []
        for step in steps:
            allowed = step.allowed_mask(self.vocab)
            if step.length is not None:
                segments.append(SegmentSpec(allowed, length=step.length))
            else:
                stop = [self.vocab[step.stop]] if step.stop else []
                limit = step.max_length
                if options.get("max_tokens") is not None:
                    limit = min(limit, options["max_tokens"])
                segments.append(SegmentSpec(allowed, max_length=limit, stop_ids=stop))
        table = self.packer.generation_attribute_table(episodes[0].task)
        sampling = Sampling(options["temperature"], options["top_k"], options["top_p"])
        generator = None
        if sampling.temperature > 0:
            generator = torch.Generator(self.device).manual_seed(int(options["seed"]))
        out = generate(
            self.model,
            prompts,
            segments,
            table,
            prefix=prefix,
            sampling=sampling,
            generator=generator,
        )
        return [(t.numpy(), p.float().numpy()) for t, p in zip(out.tokens, out.probs)]


def _common_prefix(prompts: Sequence[Any]) -> int:
    """Tokens every prompt shares at its start, leaving each at least one token of its own."""
    first = prompts[0]
    n = min(p.input_ids.numel() for p in prompts) - 1
    for p in prompts[1:]:
        same = (p.input_ids[:n] == first.input_ids[:n]) & (p.attributes[:n] == first.attributes[:n])
        differs = (~same).nonzero()
        if differs.numel():
            n = int(differs[0, 0])
    return max(n, 0)


def save_model(cfg: Any, model: torch.nn.Module, vocab: Any, out_dir: str | Path) -> Path:
    """Write an in-memory model as an exported directory that `unicl.load` reads.

    The same format as `unicl export` (unicl/model_files.py), for models that never went
    through a training run: a model trained in a notebook, or a randomly initialised one
    for speed tests.
    """
    from unicl.config import to_dict

    files = ModelFiles(Path(out_dir), to_dict(cfg), model.state_dict(), None)
    return write_export(files, dict(vocab.tokenizers), out_dir)
