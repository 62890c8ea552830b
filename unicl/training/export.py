"""`unicl export RUN OUT`: a training checkpoint -> the folder `unicl.load` reads.

The format, and how weights are read safely from a DeepSpeed checkpoint, live in
unicl/model_files.py. An export replaces OUT only when OUT is an earlier export (its
`.unicl` marker); any other existing folder, the run itself or a folder around it is
refused, and the new export is swapped in only once complete.
"""

from __future__ import annotations

from pathlib import Path

import torch

from unicl.config import UniclConfig, from_dict
from unicl.model_files import read_run, write_export
from unicl.plugins import import_plugins
from unicl.tokenizers.base import build_tokenizer
from unicl.training.logs import METRICS


def export(
    run_dir: str | Path,
    out_dir: str | Path,
    tag: str | None = None,
    dtype: torch.dtype | None = None,
    allow_plugins: bool = False,
) -> Path:
    """Write the run's checkpoint `tag` (default: latest) as an exported model into `out_dir`.

    `dtype` stores floating weights in that dtype (torch.bfloat16 halves the file);
    `allow_plugins` lets the run's config import the plugin modules it names.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    run_abs, out_abs = run_dir.resolve(), out_dir.resolve()
    if out_abs == run_abs or out_abs in run_abs.parents:
        raise ValueError(
            f"export destination {out_dir} is the run directory {run_dir} or holds it; "
            "choose a new folder"
        )
    files = read_run(run_dir, tag)
    cfg = from_dict(UniclConfig, files.config)
    import_plugins(cfg.plugins, allow=allow_plugins, source=run_dir)
    tokenizers = {str(spec["name"]): build_tokenizer(spec) for spec in cfg.tokenizers}
    log = run_dir / METRICS  # the training log travels with the weights (loss curves)
    extra = {METRICS: log} if log.is_file() else {}
    return write_export(files, tokenizers, out_dir, dtype=dtype, extra_files=extra)
