"""Where a run's data lives: the shapes world or COCO / Visual Genome files."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class DataConfig:
    """Dataset locations (filled in by the data layer)."""

    root: str = "worlds/shapes"
