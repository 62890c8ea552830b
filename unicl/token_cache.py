"""The token cache: every training record's augmented views, tokenized once and kept on disk.

Running the VQ-GAN encoder on 8 images per episode at every step would dominate
CPU training, so each training record gets `cache_views` augmented views (random
object-centred crops with scale/centre jitter and flips, tasks/base.py) whose VQ
codes are computed once, batched (in worker processes on many cores), and stored:

    <cache root>/<task>-<split>-<key>/
        codes-<name>.npy    (R, V, n) int16   one array per cached segment (Task.cache_names)
        views.json          record ids and every (record, view) crop box and flip
        complete            written last: a directory without it is rebuilt

`key` hashes everything the codes depend on: the tokenizer's identity (name,
options, and the codes it gives a fixed probe image, so other weights never reuse
stale codes), the task's view options, the seed, V, and the records themselves
(ids, annotations, image files, their sizes and modification times). Training then samples
among the cached views (unicl/streams.py); an episode is built without touching a pixel.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from unicl.paths import cache_dir
from unicl.seeding import keyed_rng
from unicl.tasks.base import Task
from unicl.tasks.prompt import Shot, View

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- #
# the token cache
# --------------------------------------------------------------------------- #


def tokenizer_identity(tokenizer: Any, image_size: int) -> str:
    """sha256 of a tokenizer's name, options and the codes of a fixed probe image."""
    h = hashlib.sha256()
    h.update(type(tokenizer).__qualname__.encode())
    h.update(json.dumps(tokenizer.options(), sort_keys=True, default=str).encode())
    probe = np.random.default_rng(1234).integers(0, 256, (image_size, image_size, 3), np.uint8)
    h.update(np.asarray(tokenizer.encode(probe), dtype=np.int64).tobytes())
    return h.hexdigest()


def _records_identity(records: Sequence[tuple[str, Any]]) -> str:
    """sha256 of every record's annotation (masks, boxes, phrases) and its image file's
    size and modification time: the cached codes depend on all of them."""
    h = hashlib.sha256()
    for rid, record in records:
        h.update(rid.encode())
        content = dataclasses.asdict(record) if dataclasses.is_dataclass(record) else record
        h.update(json.dumps(content, sort_keys=True, default=repr).encode())
        path = Path(str(getattr(record, "image_path", "")))
        try:
            st = path.stat()
            h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode())
        except OSError:
            h.update(str(path).encode())
    return h.hexdigest()


def _encode_many(tokenizer: Any, kind: str, arrays: list[np.ndarray]) -> np.ndarray:
    """(B, n) local ids of a batch of arrays, using the tokenizer's batched encoder."""
    if not kind:
        return np.stack([np.asarray(c) for c in tokenizer.encode_batch(arrays)])
    method = getattr(tokenizer, f"encode_{kind}")
    out = torch.as_tensor(method(arrays))
    if out.dim() == 2 and out.shape[0] == len(arrays):
        return out.numpy()
    return np.stack([torch.as_tensor(method(a)).reshape(-1).numpy() for a in arrays])


class _Loaded:
    """A record whose image and mask are read once and kept."""

    def __init__(self, record: Any) -> None:
        self._record = record
        self._image: np.ndarray | None = None
        self._mask: np.ndarray | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._record, name)

    def load_image(self) -> np.ndarray:
        if self._image is None:
            self._image = self._record.load_image()
        return self._image

    def load_mask(self) -> np.ndarray:
        if self._mask is None:
            self._mask = self._record.load_mask()
        return self._mask


@dataclasses.dataclass
class _Chunk:
    crops: np.ndarray  # (n, V, 4) crop boxes of the views
    flips: np.ndarray  # (n, V) bool
    codes: dict[str, np.ndarray]  # segment name -> (n, V, L) int16 codes


class _EncodeSpec(NamedTuple):
    """What every chunk of one cache build shares (sent once to each worker process)."""

    task: Task
    encoders: dict[str, Any]  # cached array name (Task.cache_names) -> its tokenizer
    seed: int
    views: int  # V: cached views per record
    batch_size: int  # records per chunk, and arrays per encoder call


def _encode_chunk(spec: _EncodeSpec, records: list[tuple[str, Any]]) -> _Chunk:
    """Views of `records` (the task's training views), encoded in batches of `batch_size`."""
    task, encoders, seed, views, batch_size = spec
    crops = np.zeros((len(records), views, 4), np.int64)
    flips = np.zeros((len(records), views), bool)
    items = []
    for r, (rid, record) in enumerate(records):
        record = _Loaded(record)  # the V views of a record read its files once
        for v in range(views):
            view = task.train_view(record, keyed_rng(seed, "view", task.name, rid, v))
            crops[r, v], flips[r, v] = view.crop, view.flip
            items.append(task.cache_arrays(Shot(record, view)))
    codes = {}
    for name, (kind, _) in items[0].items():
        batches = [
            _encode_many(encoders[name], kind, [it[name][1] for it in items[i : i + batch_size]])
            for i in range(0, len(items), batch_size)
        ]
        codes[name] = np.concatenate(batches).astype(np.int16).reshape(len(records), views, -1)
    return _Chunk(crops, flips, codes)


#: below this many chunks, starting worker processes (a few seconds each) does not pay
_MIN_PARALLEL_CHUNKS = 8
_WORKER_SPEC: _EncodeSpec | None = None  # set once per worker process by _init_worker


def _init_worker(spec: _EncodeSpec) -> None:
    global _WORKER_SPEC
    torch.set_num_threads(1)  # the workers are the parallelism
    _WORKER_SPEC = spec


def _worker_chunk(job: tuple[int, list]) -> tuple[int, _Chunk]:
    assert _WORKER_SPEC is not None
    return job[0], _encode_chunk(_WORKER_SPEC, job[1])


def _map_chunks(spec: _EncodeSpec, jobs: list[tuple[int, list]], workers: int):
    """(start, _Chunk) for every job, in order; in `workers` processes when > 1."""
    if workers <= 1 or len(jobs) < _MIN_PARALLEL_CHUNKS:
        for start, records in jobs:
            yield start, _encode_chunk(spec, records)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    ctx = multiprocessing.get_context("spawn")  # fork is unsafe once torch has threads
    # (a worker that dies raises BrokenProcessPool here instead of hanging the build)
    try:
        with ProcessPoolExecutor(min(workers, len(jobs)), ctx, _init_worker, (spec,)) as pool:
            yield from pool.map(_worker_chunk, jobs)
    except BrokenProcessPool as err:
        raise RuntimeError(
            "a token-cache worker process died (out of memory, or a tokenizer or task that "
            "cannot be rebuilt in a new process); set data.workers=1 to build the cache in "
            "this process"
        ) from err


class TokenCache:
    """Cached views and their codes for the records of one task and split."""

    def __init__(self, directory: Path) -> None:
        meta = json.loads((directory / "views.json").read_text())
        self.directory = directory
        self.record_ids: list[str] = meta["records"]
        self.row = {rid: i for i, rid in enumerate(self.record_ids)}
        self.views_per_record = int(meta["views_per_record"])
        self.size = int(meta["size"])
        self.crops = np.asarray(meta["crops"], dtype=np.int64)  # (R, V, 4)
        self.flips = np.asarray(meta["flips"], dtype=bool)  # (R, V)
        self.codes = {
            name: np.load(directory / f"codes-{name}.npy", mmap_mode="r") for name in meta["names"]
        }

    def view(self, record_id: str, v: int) -> View:
        r = self.row[record_id]
        return View(tuple(int(c) for c in self.crops[r, v]), bool(self.flips[r, v]), self.size)

    def shot(self, record: Any, record_id: str, v: int) -> Shot:
        r = self.row[record_id]
        codes = {name: np.asarray(arr[r, v], dtype=np.int64) for name, arr in self.codes.items()}
        return Shot(record, self.view(record_id, v), codes)

    @classmethod
    def build(
        cls,
        task: Task,
        vocab: Any,
        records: Sequence[tuple[str, Any]],
        split: str,
        seed: int,
        root: str | Path,
        batch_size: int = 32,
        progress: bool = True,
        workers: int = 1,
    ) -> TokenCache:
        """Open the cache for these records, computing whatever is missing first.

        `workers` > 1 processes read, crop and encode chunks of records in parallel (one
        torch thread each); the files are byte-identical to one process's.
        """
        key_data = _cache_key(task, vocab, records, split, seed)
        key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:16]
        directory = Path(root) / f"{task.name}-{split}-{key}"
        if (directory / "complete").is_file():
            return cls(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in {task.image_tokenizer, *key_data["tokenizers"]}:
            if vocab.tokenizers[name].vocab_size > np.iinfo(np.int16).max + 1:
                raise ValueError(
                    f"{name}: {vocab.tokenizers[name].vocab_size} codes do not fit int16"
                )
        encoders = {n: vocab.tokenizers[task.cache_tokenizer(n)] for n in task.cache_names()}
        spec = _EncodeSpec(task, encoders, seed, task.cache_views, batch_size)
        desc = f"token cache {task.name}/{split}"
        crops, flips, names = _write_codes(spec, records, directory, workers, desc, progress)
        meta = {
            "key": key_data,
            "records": [rid for rid, _ in records],
            "views_per_record": task.cache_views,
            "size": task.image_size,
            "names": names,
            "crops": crops.tolist(),
            "flips": flips.tolist(),
        }
        (directory / "views.json").write_text(json.dumps(meta))
        (directory / "complete").write_text("ok\n")
        return cls(directory)


def _cache_key(
    task: Task, vocab: Any, records: Sequence[tuple[str, Any]], split: str, seed: int
) -> dict[str, Any]:
    """Everything the cached codes depend on (the module docstring's `key`, before hashing)."""
    tokenizer = vocab.tokenizers[task.image_tokenizer]
    return {
        "tokenizer": tokenizer_identity(tokenizer, task.image_size),
        # a task may encode some arrays (masks) with another tokenizer
        "tokenizers": {
            n: vocab.tokenizers[n].options()
            for n in sorted({task.cache_tokenizer(a) for a in task.cache_names()})
            if n != task.image_tokenizer
        },
        "task": task.name,
        "options": task.options(),
        "split": split,
        "seed": seed,
        "views": task.cache_views,
        "records": _records_identity(records),
    }


def _write_codes(
    spec: _EncodeSpec, records: Sequence[tuple[str, Any]], directory: Path, workers: int,
    desc: str, progress: bool,
) -> tuple[np.ndarray, np.ndarray, list[str]]:  # fmt: skip
    """Encode every view of `records` into `codes-<name>.npy` under `directory`.

    Returns the views' crop boxes (R, V, 4), their flips (R, V) and the segment names.
    """
    from tqdm import tqdm

    batch_size, views = spec.batch_size, spec.views
    crops = np.zeros((len(records), views, 4), np.int64)
    flips = np.zeros((len(records), views), bool)
    arrays: dict[str, np.ndarray] = {}
    # chunks of `batch_size` records: every encoder batch holds the same views as in one
    # process, so the bytes do not depend on the number of workers
    starts = range(0, len(records), batch_size)
    jobs = [(start, list(records[start : start + batch_size])) for start in starts]
    bar = tqdm(total=len(records) * views, desc=desc, unit="view", disable=not progress)
    for start, chunk in _map_chunks(spec, jobs, workers):
        n = len(chunk.crops)
        crops[start : start + n], flips[start : start + n] = chunk.crops, chunk.flips
        for name, codes in chunk.codes.items():
            if name not in arrays:
                path = directory / f"codes-{name}.npy"
                shape = (len(records), views, codes.shape[2])
                arrays[name] = np.lib.format.open_memmap(path, "w+", np.int16, shape)
            arrays[name][start : start + n] = codes
        bar.update(n * views)
    bar.close()
    for arr in arrays.values():
        arr.flush()
    return crops, flips, sorted(arrays)


def default_cache_root(task: Task) -> Path:
    """Where a task's token caches live: its `cache_dir`, else unicl's cache directory."""
    return Path(task.cache_dir) if task.cache_dir else cache_dir() / "tokens"
