"""The "gpt2" tokenizer: GPT-2's byte-level BPE through tiktoken, fully offline.

The paper's tokenizers (arXiv 2312.02520): text is GPT-2 BPE, 50257 entries,
`<|endoftext|>` = 50256, "Hello world" -> [15496, 995].
`tiktoken.get_encoding("gpt2")` downloads its files, so instead we build the same
`tiktoken.Encoding` from GPT-2's merge table (`gpt2.tiktoken`, as shipped in the
openai-whisper source distribution) and GPT-2's pre-tokenisation pattern.
`install_gpt2_bpe` (CLI: `unicl fetch-bpe`) puts that table into unicl's cache.

A *subset* (option `subset_file`: a file written by `write_subset`, or `builtin:shapes` for the
shapes world) keeps only the GPT-2 tokens a corpus needs: all 256 single bytes (so any text
still encodes), every token of the corpus and every piece BPE builds them from. Ids are then
positions in the subset, and the embedding shrinks with it (52k -> about 0.6k rows for the
shapes world). On the corpus it encodes exactly as GPT-2 does (the merges it needs are all
kept, and BPE picks the same lowest-rank merge at every step); other words fall back to
smaller pieces, down to single bytes, and still decode to the same text.

Where the table is looked for, first hit wins:
  1. the tokenizer option `bpe_file` (config: `tokenizers: [{name: gpt2, bpe_file: ...}]`);
  2. the environment variable `$UNICL_GPT2_BPE`;
  3. `unicl.paths.gpt2_bpe_path()` (the cache; `$UNICL_CACHE` moves it).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import tiktoken
import torch
from tiktoken.load import load_tiktoken_bpe

from unicl.paths import GPT2_BPE_FILENAME, GPT2_BPE_SHA256, gpt2_bpe_path
from unicl.tokenizers.base import TOKENIZERS, Tokenizer

#: GPT-2's pre-tokeniser: contractions, letter runs, digit runs, other symbol runs
#: (each optionally led by one space), then whitespace.
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"
ENDOFTEXT_ID = 50256
N_MERGEABLE = 50256
#: the openai-whisper release whose sdist carries the table
WHISPER_SDIST = "openai-whisper==20250625"
WHISPER_MEMBER_SUFFIX = "whisper/assets/gpt2.tiktoken"
BPE_ENV = "UNICL_GPT2_BPE"


def resolve_bpe_file(bpe_file: str | Path | None = None) -> Path:
    """The GPT-2 table to use (see the module docstring for the order), or FileNotFoundError."""
    if bpe_file is not None:
        path, source = Path(bpe_file).expanduser(), "the gpt2 tokenizer option bpe_file"
    elif os.environ.get(BPE_ENV):
        path, source = Path(os.environ[BPE_ENV]).expanduser(), f"${BPE_ENV}"
    else:
        path, source = gpt2_bpe_path(), "unicl's cache"
    if not path.is_file():
        raise FileNotFoundError(
            f"GPT-2 BPE table not found at {path} (from {source}). Install it with "
            f"`unicl fetch-bpe` (downloads the openai-whisper sdist from PyPI and extracts "
            f"{WHISPER_MEMBER_SUFFIX}), or `unicl fetch-bpe --sdist FILE.tar.gz` offline, "
            f"or point bpe_file / ${BPE_ENV} at a copy of gpt2.tiktoken."
        )
    return path


@functools.lru_cache(maxsize=4)
def _load_ranks(path: str, mtime_ns: int) -> dict[bytes, int]:
    # Keyed on the file's mtime too, so a replaced table is re-read.
    ranks = load_tiktoken_bpe(path)
    if len(ranks) != N_MERGEABLE:
        raise ValueError(
            f"{path}: expected GPT-2's {N_MERGEABLE} BPE ranks, found {len(ranks)}; "
            f"this is not GPT-2's gpt2.tiktoken"
        )
    return ranks


@functools.lru_cache(maxsize=8)
def _load_encoding(
    path: str, mtime_ns: int, keep: frozenset[int] | None = None
) -> tiktoken.Encoding:
    ranks = _load_ranks(path, mtime_ns)
    if keep is not None:  # GPT-2's own ranks, gaps and all: BPE keeps its merge order
        ranks = {piece: rank for piece, rank in ranks.items() if rank in keep}
    return tiktoken.Encoding(
        name="gpt2" if keep is None else "gpt2-subset",
        pat_str=GPT2_SPLIT_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: ENDOFTEXT_ID},
    )


SUBSET_FORMAT = "unicl-gpt2-subset"
SUBSET_FILENAME = "gpt2_subset.json"
BUILTIN_PREFIX = "builtin:"


def _merge_pieces(token: bytes, ranks: dict[bytes, int]) -> set[int]:
    """Ranks of every piece BPE builds while merging `token`'s bytes (the token included)."""
    parts = [bytes([b]) for b in token]
    made = {ranks[p] for p in parts}
    while len(parts) > 1:
        pairs = [(ranks.get(a + b), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min((r, i) for r, i in pairs if r is not None)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
        made.add(rank)
    return made


def subset_ids(texts: Sequence[str], bpe_file: str | Path | None = None) -> list[int]:
    """The GPT-2 ids a subset for `texts` keeps: single bytes, `<|endoftext|>`, the texts'
    tokens and every piece BPE merges them from (see the module docstring)."""
    path = resolve_bpe_file(bpe_file)
    ranks = _load_ranks(str(path), path.stat().st_mtime_ns)
    encoding = _load_encoding(str(path), path.stat().st_mtime_ns)
    keep = {ranks[bytes([b])] for b in range(256)} | {ENDOFTEXT_ID}
    tokens = {t for ids in encoding.encode_ordinary_batch(list(texts)) for t in ids}
    for token in tokens:
        keep |= _merge_pieces(encoding.decode_single_token_bytes(token), ranks)
    return sorted(keep)


def write_subset(
    texts: Sequence[str], path: str | Path, bpe_file: str | Path | None = None
) -> Path:
    """Write the subset file for `texts` (the `subset_file` option of the gpt2 tokenizer)."""
    path = Path(path)
    ids = subset_ids(texts, bpe_file)
    path.write_text(json.dumps({"format": SUBSET_FORMAT, "gpt2_ids": ids}) + "\n")
    return path


def resolve_subset(subset: str) -> Path:
    """A subset option -> its file (`builtin:<name>`: shipped with unicl)."""
    if subset.startswith(BUILTIN_PREFIX):
        name = subset[len(BUILTIN_PREFIX) :]
        path = Path(str(resources.files("unicl.assets") / "gpt2_subsets" / f"{name}.json"))
        if not path.is_file():
            raise ValueError(f"gpt2: no builtin subset {name!r} (builtin:shapes is shipped)")
        return path
    path = Path(subset).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"gpt2: subset file not found: {path}")
    return path


def read_subset(path: Path) -> frozenset[int]:
    """The GPT-2 ids of a subset file, checked (every single byte and `<|endoftext|>` kept)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a gpt2 subset file ({err})") from err
    if not isinstance(data, dict) or data.get("format") != SUBSET_FORMAT:
        raise ValueError(f"{path}: not a gpt2 subset file (format {SUBSET_FORMAT!r} expected)")
    ids = data.get("gpt2_ids")
    if not isinstance(ids, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= ENDOFTEXT_ID for i in ids
    ):
        raise ValueError(f"{path}: gpt2_ids must be a list of GPT-2 ids in [0, {ENDOFTEXT_ID}]")
    return frozenset(ids)


@TOKENIZERS.register("gpt2")
class GPT2Tokenizer(Tokenizer):
    """GPT-2 BPE text tokenizer (50257 ids, identical to GPT-2's).

    Text is encoded literally: a `<|endoftext|>` written inside the text is split
    into ordinary tokens, never turned into id 50256 (user text cannot inject
    control tokens). `decode` replaces byte sequences that are not valid UTF-8
    (possible for arbitrary id runs) with U+FFFD.
    """

    name = "gpt2"
    modality = "text"

    def __init__(self, bpe_file: str | None = None, subset_file: str | None = None) -> None:
        self._bpe_option = bpe_file
        self._subset_option = subset_file
        self.bpe_path = resolve_bpe_file(bpe_file)
        mtime = self.bpe_path.stat().st_mtime_ns
        keep = None
        if subset_file is not None:
            self.subset_path = resolve_subset(subset_file)
            keep = read_subset(self.subset_path)
            ranks = _load_ranks(str(self.bpe_path), mtime)
            missing = [b for b in range(256) if ranks[bytes([b])] not in keep]
            if missing or ENDOFTEXT_ID not in keep:
                raise ValueError(
                    f"{self.subset_path}: a subset must keep all 256 single bytes and "
                    f"<|endoftext|> (missing e.g. byte {missing[:1]}); write it with write_subset"
                )
        self.encoding = _load_encoding(str(self.bpe_path), mtime, keep)
        #: local id -> GPT-2 id (the identity without a subset)
        self.gpt2_ids = np.arange(ENDOFTEXT_ID + 1) if keep is None else np.array(sorted(keep))
        self._local = np.full(ENDOFTEXT_ID + 1, -1, np.int64)  # GPT-2 id -> local id
        self._local[self.gpt2_ids] = np.arange(len(self.gpt2_ids))

    @property
    def vocab_size(self) -> int:
        return len(self.gpt2_ids)

    @property
    def eot_id(self) -> int:
        """Id of `<|endoftext|>` (50256 without a subset)."""
        return int(self._local[ENDOFTEXT_ID])

    @staticmethod
    def _check_text(text: Any) -> str:
        if not isinstance(text, str):
            raise TypeError(f"gpt2: text must be a str, got {type(text).__name__}")
        if not text:
            raise ValueError("gpt2: text is empty; there is nothing to tokenize")
        return text

    def encode(self, payload: str) -> torch.Tensor:
        ids = self.encoding.encode_ordinary(self._check_text(payload))
        return torch.from_numpy(self._local[ids])  # (n,)

    def encode_batch(self, payloads: Sequence[str]) -> list[torch.Tensor]:
        texts = [self._check_text(t) for t in payloads]
        batches = self.encoding.encode_ordinary_batch(texts)
        return [torch.from_numpy(self._local[ids]) for ids in batches]

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        gpt2 = self.gpt2_ids[self.check_ids(ids).numpy()].tolist()
        return self.encoding.decode(gpt2, errors="replace")

    def options(self) -> dict[str, Any]:
        out: dict[str, Any] = {} if self._bpe_option is None else {"bpe_file": self._bpe_option}
        if self._subset_option is not None:
            out["subset_file"] = self._subset_option
        return out

    def save_files(self, directory: Path) -> dict[str, Any]:
        # A saved model carries its own copy (1.6 MB) so that it loads on a machine
        # whose cache has no table.
        target = directory / GPT2_BPE_FILENAME
        if self.bpe_path.resolve() != target.resolve():
            shutil.copyfile(self.bpe_path, target)
        files = {"bpe_file": GPT2_BPE_FILENAME}
        if self._subset_option is not None:
            subset = directory / SUBSET_FILENAME
            if self.subset_path.resolve() != subset.resolve():
                shutil.copyfile(self.subset_path, subset)
            files["subset_file"] = SUBSET_FILENAME
        return files


# --------------------------------------------------------------------------- #
# installing the table
# --------------------------------------------------------------------------- #


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_member(sdist: Path) -> bytes:
    """The bytes of whisper/assets/gpt2.tiktoken inside an openai-whisper sdist."""
    if not sdist.is_file():
        raise FileNotFoundError(f"{sdist}: no such openai-whisper source distribution")
    try:
        with tarfile.open(sdist, "r:*") as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.endswith(WHISPER_MEMBER_SUFFIX):
                    handle = tar.extractfile(member)
                    if handle is not None:
                        return handle.read()
    except tarfile.TarError as err:
        raise ValueError(f"{sdist}: not a readable .tar.gz source distribution: {err}") from err
    raise ValueError(f"{sdist}: holds no {WHISPER_MEMBER_SUFFIX}; is it openai-whisper's sdist?")


def _download_sdist(directory: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--disable-pip-version-check", "-d", str(directory), WHISPER_SDIST,
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(directory.glob("openai[-_]whisper-*.tar.gz"))
    if result.returncode != 0 or not found:
        raise ConnectionError(  # an OSError: the network or the index, not a bug
            f"could not download {WHISPER_SDIST} with pip (exit {result.returncode}):\n"
            f"{result.stderr.strip()[-2000:]}\n"
            f"Download the sdist elsewhere and run `unicl fetch-bpe --sdist FILE.tar.gz`."
        )
    return found[0]


def install_gpt2_bpe(sdist: Path | None = None, dest: Path | None = None) -> Path:
    """Put GPT-2's BPE table at `dest` (default: the cache) and return its path.

    Idempotent: a `dest` that already holds the right table (by sha256) is left as
    it is. Otherwise the table is read from `sdist` (an openai-whisper .tar.gz) or
    from one downloaded with `pip download`, checked against
    `unicl.paths.GPT2_BPE_SHA256`, and written atomically.
    """
    dest = Path(dest).expanduser() if dest is not None else gpt2_bpe_path()
    if dest.is_dir():
        dest = dest / GPT2_BPE_FILENAME
    if dest.is_file() and _sha256(dest.read_bytes()) == GPT2_BPE_SHA256:
        return dest
    with tempfile.TemporaryDirectory(prefix="unicl-bpe-") as tmp:
        source = Path(sdist).expanduser() if sdist is not None else _download_sdist(Path(tmp))
        data = _read_member(source)
    digest = _sha256(data)
    if digest != GPT2_BPE_SHA256:
        raise ValueError(
            f"{source}: {WHISPER_MEMBER_SUFFIX} has sha256 {digest}, expected {GPT2_BPE_SHA256}"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    # write-then-rename: a reader never sees a half-written table
    fd, tmp_name = tempfile.mkstemp(prefix=".gpt2-", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp_name, dest)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return dest
