"""Resumable, crash-safe training checkpoints on top of DeepSpeed's.

Layout of a run directory's checkpoints:

    checkpoints/
      latest                  the tag of the last COMPLETE checkpoint (one line)
      step00000500/           DeepSpeed's files (model, optimiser, scheduler, client state)
        config.yaml           the run's full config at save time
        rng_rank0.pt ...      each rank's RNG states (tensors only)
      step00001000/ ...

A save writes into a hidden `.tmp-<tag>` directory; only when every rank has
finished does rank 0 rename it to `<tag>` and then replace `latest` atomically
(write a temporary file, `os.replace`). A crash at any point before that leaves
`latest` and the checkpoint it names untouched; stale `.tmp-*` directories are
removed by the next save. Old checkpoints beyond `keep` are deleted only after the
new one is in place.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from unicl.safe_load import safe_torch_load
from unicl.training.engine import barrier

LATEST = "latest"
CONFIG = "config.yaml"
TMP_PREFIX = ".tmp-"
#: the only names the manager ever deletes or replaces (its own tags and temporaries)
_TAG = re.compile(r"step\d{8,}")
#: config sections / keys that must not change when a run resumes
COMPAT_KEYS = ("model", "vocab", "tokenizers", "tasks", "seed", "train.batch_size")


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def step_of(tag: str) -> int:
    """The step a checkpoint tag names (inverse of `tag_for`)."""
    if not _TAG.fullmatch(tag):
        raise ValueError(f"{tag!r} is not a checkpoint tag (expected e.g. {tag_for(500)!r})")
    return int(tag[len("step") :])


# --------------------------------------------------------------------------- #
# RNG state (per rank)
# --------------------------------------------------------------------------- #


def rng_state() -> dict[str, torch.Tensor]:
    """This process's torch / CUDA / numpy / python RNG states as tensors."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    # the legacy global numpy RNG: libraries (augmentations, samplers) may draw from it
    _, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    state["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    state["numpy_rest"] = torch.tensor([pos, has_gauss], dtype=torch.int64)
    state["numpy_gauss"] = torch.tensor([cached], dtype=torch.float64)
    version, internal, gauss = random.getstate()
    state["python"] = torch.tensor([version, *internal], dtype=torch.int64)
    state["python_gauss"] = torch.tensor([np.nan if gauss is None else gauss])
    return state


def set_rng_state(state: Mapping[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    pos, has_gauss = (int(x) for x in state["numpy_rest"])
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    gauss_np = float(state["numpy_gauss"][0])
    np.random.set_state(("MT19937", keys, pos, has_gauss, gauss_np))  # noqa: NPY002
    values = [int(x) for x in state["python"]]
    gauss = float(state["python_gauss"][0])
    random.setstate((values[0], tuple(values[1:]), None if np.isnan(gauss) else gauss))


# --------------------------------------------------------------------------- #
# config compatibility
# --------------------------------------------------------------------------- #


def _lookup(tree: Mapping[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return "<missing>"
        node = node[part]
    return node


def _differences(old: Any, new: Any, prefix: str) -> list[str]:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _differences(
                old.get(key, "<missing>"), new.get(key, "<missing>"), f"{prefix}.{key}"
            )
        return out
    return [] if old == new else [f"{prefix}: checkpoint {old!r}, config {new!r}"]


_RESUME_NEEDS = "resume needs the same model, vocabulary, tokenizers, tasks, seed and batch size"


def check_compatible(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    keys: Iterable[str] = COMPAT_KEYS,
    needs: str = _RESUME_NEEDS,
    hint: str = "use another train.run_dir to start a new run",
) -> None:
    """ValueError listing every key in `keys` where the checkpoint's config differs; `needs`
    says why they must agree and `hint` what to do instead."""
    diffs: list[str] = []
    for key in keys:
        diffs += _differences(_lookup(saved, key), _lookup(current, key), key)
    if diffs:
        raise ValueError(
            f"the checkpoint does not match this config ({needs}):\n  "
            + "\n  ".join(diffs)
            + f"\n{hint}"
        )


# --------------------------------------------------------------------------- #
# the manager
# --------------------------------------------------------------------------- #


class CheckpointManager:
    """Saves and finds checkpoints in `<run_dir>/checkpoints` (see the module docstring)."""

    def __init__(self, directory: str | Path, keep: int = 2, rank: int = 0) -> None:
        self.directory = Path(directory)
        self.keep = keep
        self.rank = rank

    # ---- finding --------------------------------------------------------- #

    def latest(self) -> str | None:
        """The tag of the last complete checkpoint, or None."""
        path = self.directory / LATEST
        if not path.is_file():
            return None
        tag = path.read_text().strip()
        if not _TAG.fullmatch(tag):
            raise ValueError(f"{path} names {tag!r}, which is not a checkpoint tag")
        if not (self.directory / tag).is_dir():
            raise FileNotFoundError(
                f"{path} names checkpoint {tag!r} but {self.directory / tag} does not exist"
            )
        return tag

    def tags(self) -> list[str]:
        """Complete checkpoint tags, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(
            p.name
            for p in self.directory.iterdir()
            if p.is_dir() and _TAG.fullmatch(p.name) and (p / CONFIG).is_file()
        )

    def saved_config(self, tag: str) -> dict[str, Any]:
        return yaml.safe_load((self.directory / tag / CONFIG).read_text())

    # ---- saving ------------------------------------------------------------ #

    def save(self, engine, step: int, client_state: dict[str, Any], config: Mapping) -> str:
        """Save a checkpoint of step `step` from every rank; returns its tag.

        Collective: every rank must call it. On any failure the temporary directory
        is removed and the error re-raised; `latest` still names the previous one.
        """
        tag = tag_for(step)
        tmp_tag = TMP_PREFIX + tag
        tmp_dir = self.directory / tmp_tag
        if self.rank == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            for stale in self.directory.glob(TMP_PREFIX + "*"):
                if _TAG.fullmatch(stale.name[len(TMP_PREFIX) :]) and stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
        barrier()
        try:
            engine.save_checkpoint(
                str(self.directory), tag=tmp_tag, client_state=client_state, save_latest=False
            )
            torch.save(rng_state(), tmp_dir / f"rng_rank{self.rank}.pt")
            if self.rank == 0:
                (tmp_dir / CONFIG).write_text(yaml.safe_dump(dict(config), sort_keys=False))
        except BaseException:
            if self.rank == 0:
                shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
        barrier()
        if self.rank == 0:
            final = self.directory / tag
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp_dir, final)
            self._write_latest(tag)
            self._prune(keep_tag=tag)
        barrier()
        return tag

    def _write_latest(self, tag: str) -> None:
        tmp = self.directory / (TMP_PREFIX + LATEST)
        with open(tmp, "w") as f:
            f.write(tag + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.directory / LATEST)

    def _prune(self, keep_tag: str) -> None:
        if self.keep <= 0:
            return
        tags = [t for t in self.tags() if t != keep_tag]
        for old in tags[: max(0, len(tags) - (self.keep - 1))]:
            shutil.rmtree(self.directory / old, ignore_errors=True)

    # ---- loading ----------------------------------------------------------- #

    def load(self, engine, tag: str) -> dict[str, Any]:
        """Restore model, optimiser, scheduler and this rank's RNG; returns the client state."""
        path, client_state = engine.load_checkpoint(
            str(self.directory),
            tag=tag,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if path is None:
            raise FileNotFoundError(f"DeepSpeed could not load checkpoint {self.directory / tag}")
        rng_file = self.directory / tag / f"rng_rank{self.rank}.pt"
        if not rng_file.is_file():
            raise FileNotFoundError(
                f"{rng_file} is missing: was the checkpoint written with a different number "
                "of ranks? resume with the same number of ranks"
            )
        set_rng_state(safe_torch_load(rng_file))
        return client_state or {}
