"""Folders unicl writes: proving they are unicl's own, and replacing them atomically.

Every command that deletes or overwrites a folder first checks that unicl made it, so a
mistyped path can never cost a user their files:

    kind     made by                     recognised by
    run      `unicl train`               run.json, or the marker below
    export   `unicl export`              the marker below (or exactly the export's files)
    world    `unicl make-world`          manifest.json of format unicl-shapes-world, or the marker
    results  `unicl demo`                metrics.json, or the marker

The marker is a small JSON file, `.unicl`, written into a folder when unicl creates it (or
claims it while it is still empty). `claim` creates or checks; `require_own` refuses anything
else with a ValueError naming the folder and what it holds.

`replace_dir` moves a finished temporary folder over its destination in one step where the
OS allows it (Linux `renameat2(RENAME_EXCHANGE)`), so readers see the old folder or the new
one and never neither; elsewhere it renames the old folder aside first and removes it last.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shutil
import tempfile
from pathlib import Path

MARKER = ".unicl"
KINDS = ("run", "export", "world", "results")
#: files that identify folders made before markers existed (see the module docstring)
_LEGACY = {"run": ("run.json",), "results": ("metrics.json",)}
_EXPORT_FILES = {"config.yaml", "model.safetensors", "tokenizers"}


def _marker_kind(path: Path) -> str | None:
    try:
        return json.loads((path / MARKER).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def is_own(path: str | os.PathLike, kind: str) -> bool:
    """Did unicl make the folder `path` as a `kind` folder (see the module docstring)?"""
    path = Path(path)
    if not path.is_dir():
        return False
    if _marker_kind(path) == kind:
        return True
    if kind == "world":
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except (OSError, ValueError):
            return False
        return isinstance(manifest, dict) and manifest.get("format") == "unicl-shapes-world"
    if kind == "export":
        names = {p.name for p in path.iterdir()}
        return names == _EXPORT_FILES or names == _EXPORT_FILES | {MARKER}
    return any((path / name).is_file() for name in _LEGACY.get(kind, ()))


def _describe(path: Path) -> str:
    names = sorted(p.name for p in path.iterdir())
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return f"it holds {len(names)} entries ({shown})"


def require_own(path: str | os.PathLike, kind: str, what: str) -> None:
    """ValueError unless `path` is missing, empty, or a `kind` folder unicl made.

    `what` names the option or argument that chose the folder, for the message.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise ValueError(f"{what}: {path} is a file, not a folder; unicl will not replace it")
    if not any(path.iterdir()) or is_own(path, kind):
        return
    raise ValueError(
        f"{what}: {path} exists and is not a {kind} folder written by unicl ({_describe(path)}); "
        "unicl never deletes or overwrites folders it did not create: choose another path"
    )


def claim(path: str | os.PathLike, kind: str, what: str) -> Path:
    """Create `path` (or check it is ours, as `require_own`) and mark it as a `kind` folder."""
    path = Path(path)
    require_own(path, kind, what)
    path.mkdir(parents=True, exist_ok=True)
    if _marker_kind(path) != kind:
        (path / MARKER).write_text(json.dumps({"kind": kind}) + "\n")
    return path


def temporary_sibling(path: str | os.PathLike) -> Path:
    """A new, empty, uniquely named hidden folder beside `path` (for `replace_dir`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))


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
    is unicl's own first); removes the old folder afterwards."""
    tmp, dest = Path(tmp), Path(dest)
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
