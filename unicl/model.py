"""The decoder (filled in by the model issue)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class ModelConfig:
    """Decoder shape."""

    n_layer: int = 4
    d_model: int = 256
