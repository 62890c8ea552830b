"""Training hyper-parameters."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class TrainConfig:
    """Optimisation and schedule settings (filled in by the training issue)."""

    lr: float = 1e-4
    steps: int = 1000
