"""Token-cache build time with 1 process and with worker processes, and whether the files match.

    python tools/bench_token_cache.py --records 5000 --workers 2

Builds the training token cache of both tasks of `configs/shapes_tiny.yaml` (the shapes
world under data.root, made first if missing) into fresh temporary folders, once per worker
count, and prints the wall time of each build and whether every file is byte-identical to
the one-process build.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path


def digest(directory: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def main() -> None:
    from unicl.config import load_config
    from unicl.streams import build_tasks
    from unicl.tasks.sources import ensure_world
    from unicl.token_cache import TokenCache
    from unicl.vocab import Vocabulary

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000, help="records per task (at most)")
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("overrides", nargs="*", help="config overrides (key=value)")
    args = parser.parse_args()
    cfg = load_config("shapes_tiny", args.overrides)
    ensure_world(cfg.data)
    vocab = Vocabulary.from_config(cfg)
    for name, task in sorted(build_tasks(cfg, vocab).items()):
        pools = task.pools(cfg.data, "train")
        records = [(task.record_id(r), r) for _, pool in sorted(pools.items()) for r in pool]
        records = records[: args.records]
        reference = None
        for workers in [1, *args.workers]:
            root = tempfile.mkdtemp(prefix="cache-bench-")
            start = time.perf_counter()
            cache = TokenCache.build(
                task, vocab, records, "train", cfg.seed, root, progress=False, workers=workers
            )
            seconds = time.perf_counter() - start
            same = reference is None or digest(cache.directory) == reference
            reference = reference or digest(cache.directory)
            views = len(records) * task.cache_views
            print(
                f"{name}: {len(records)} records, workers {workers}: {seconds:.1f} s "
                f"({views / seconds:.0f} views/s), same bytes as 1 process: {same}",
                flush=True,
            )


if __name__ == "__main__":
    main()
