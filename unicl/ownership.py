"""Folders unicl writes: proving they are unicl's own, and replacing them atomically.

Every command that deletes or overwrites a folder first checks that unicl made it, so a
mistyped path can never cost a user their files. A folder is unicl's own `kind` folder when
it holds the marker `.unicl` (a small JSON file naming the kind, written when unicl creates
the folder or claims it while empty), or, for folders made before markers existed, when
every entry in it is one that unicl writes for that kind (`ENTRIES`) and its identifying
file is there:

    kind      made by               entries
    run       `unicl train`         checkpoints/, run.json, config.yaml, metrics.jsonl, ...
    export    `unicl export`        config.yaml, model.safetensors, tokenizers/
    world     `unicl make-world`    images/, annotations/, manifest.json
    results   `unicl demo`          grid.png, captions.md, metrics.md, metrics.json, loss.png, ...
    vqgan     `unicl train-vqgan`   train_log.jsonl, checkpoint.pt, eval.json, export/
    episodes  `unicl make-episodes` <task>_<split>_<group>_seed<s>.json files

`require_own` refuses anything else (and symbolic links) with a ValueError naming the
folder; `claim` creates or checks and marks; `clear_own` deletes only the entries unicl
writes. `replace_dir` moves a finished temporary folder over its destination in one step
where the OS allows it (Linux `renameat2(RENAME_EXCHANGE)`), so readers see the old folder
or the new one and never neither; elsewhere it renames the old folder aside first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fnmatch
import json
import os
import shutil
import tempfile
from pathlib import Path

MARKER = ".unicl"
#: kind -> the entries unicl writes into such a folder (glob patterns)
ENTRIES: dict[str, tuple[str, ...]] = {
    "run": (
        "checkpoints",
        "run.json",
        "config.yaml",
        "metrics.jsonl",
        "curves.png",
        "tb",
        "eval",
        "episodes",
        "export",
        "events.jsonl",
    ),
    "export": ("config.yaml", "model.safetensors", "tokenizers", "metrics.jsonl"),
    "world": ("images", "annotations", "manifest.json"),
    "results": (
        "grid.png",
        "captions.md",
        "metrics.md",
        "metrics.json",
        "loss.png",
        "eval",
        "episodes",
    ),
    "vqgan": ("train_log.jsonl", "checkpoint.pt", "checkpoint.pt.tmp", "eval.json", "export"),
    "episodes": ("*_seed*.json",),
}
#: kind -> the file a folder made before markers existed must hold to count as that kind
_IDENTIFIED_BY = {
    "run": "run.json",
    "export": "model.safetensors",
    "world": "manifest.json",
    "results": "metrics.json",
    "vqgan": "checkpoint.pt",
    "episodes": "*_seed*.json",
}
KINDS = tuple(ENTRIES)


def _marker_kind(path: Path) -> str | None:
    try:
        return json.loads((path / MARKER).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def _unicl_entry(name: str, kind: str) -> bool:
    return name == MARKER or any(fnmatch.fnmatchcase(name, p) for p in ENTRIES[kind])


def is_own(path: str | os.PathLike, kind: str) -> bool:
    """Did unicl make the folder `path` as a `kind` folder (see the module docstring)?"""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return False
    if _marker_kind(path) == kind:
        return True
    names = [p.name for p in path.iterdir()]
    if not names or not all(_unicl_entry(n, kind) for n in names):
        return False
    if not any(fnmatch.fnmatchcase(n, _IDENTIFIED_BY[kind]) for n in names):
        return False
    if kind == "world":
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except (OSError, ValueError):
            return False
        return isinstance(manifest, dict) and manifest.get("format") == "unicl-shapes-world"
    return True


def _describe(path: Path) -> str:
    names = sorted(p.name for p in path.iterdir())
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return f"it holds {len(names)} entries ({shown})"


def require_own(path: str | os.PathLike, kind: str, what: str) -> None:
    """ValueError unless `path` is missing, an empty folder, or a `kind` folder unicl made.

    `what` names the option or argument that chose the folder, for the message.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    path = Path(path)
    if path.is_symlink():
        raise ValueError(
            f"{what}: {path} is a symbolic link; give the folder it points to "
            f"({os.path.realpath(path)}) if that is what you mean"
        )
    if not path.exists():
        blocked = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocked is not None:
            raise ValueError(f"{what}: {path} lies below {blocked}, which is a file")
        return
    if not path.is_dir():
        raise ValueError(f"{what}: {path} is a file, not a folder; unicl will not replace it")
    if not any(path.iterdir()) or is_own(path, kind):
        return
    raise ValueError(
        f"{what}: {path} exists and is not a unicl {kind} folder ({_describe(path)}); unicl "
        "never deletes or overwrites folders it did not create: choose another path"
    )


def claim(path: str | os.PathLike, kind: str, what: str) -> Path:
    """Create `path` (or check it is ours, as `require_own`) and mark it as a `kind` folder."""
    path = Path(path)
    require_own(path, kind, what)
    path.mkdir(parents=True, exist_ok=True)
    if _marker_kind(path) != kind:
        (path / MARKER).write_text(json.dumps({"kind": kind}) + "\n")
    return path


def clear_own(path: str | os.PathLike, kind: str, what: str) -> None:
    """Delete what unicl wrote into the `kind` folder `path` (checked first); other entries
    a user added stay, and the folder is removed only if nothing else is left."""
    path = Path(path)
    require_own(path, kind, what)
    if not path.exists():
        return
    for entry in path.iterdir():
        if _unicl_entry(entry.name, kind):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    if not any(path.iterdir()):
        path.rmdir()


def temporary_sibling(path: str | os.PathLike) -> Path:
    """A new, empty, uniquely named hidden folder beside `path` (for `replace_dir`), with
    the permissions of a normally created folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700: an export must stay shareable
    return tmp


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return result == 0


def replace_dir(tmp: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Move the finished folder `tmp` to `dest`, replacing what is there (callers check it
    is unicl's own first, which also rules out symbolic links); removes the old folder."""
    tmp, dest = Path(tmp), Path(dest)
    if dest.is_symlink():
        raise ValueError(f"{dest} is a symbolic link; unicl replaces only real folders")
    if not dest.exists():
        os.replace(tmp, dest)
        return dest
    if _exchange(tmp, dest):
        shutil.rmtree(tmp)  # the old folder now lives at tmp
        return dest
    aside = temporary_sibling(dest)
    os.replace(dest, aside / dest.name)
    os.replace(tmp, dest)
    shutil.rmtree(aside)
    return dest
