"""Random generators named by keys: the same seed and names always give the same numbers.

Training samples, cached views and evaluation episodes each draw from a generator
seeded by the run's seed and names (task, split, category, record, sample index),
so that no draw depends on what was drawn before it: a resumed or repeated run
sees the same data.
"""

from __future__ import annotations

import zlib

import numpy as np


def keyed_rng(seed: int, *keys: str | int) -> np.random.Generator:
    """A generator that depends only on `seed` and `keys` (a string by its CRC-32, an int as is)."""
    parts = [seed] + [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return np.random.default_rng(parts)
