"""Loading unicl's own weight files safely: tensors only, and finite.

`safe_torch_load` refuses any pickle that holds more than tensors and plain containers
(loading one could run code); `check_finite` refuses weights holding NaN or infinity.
Models (unicl/model_files.py), DeepSpeed resume (unicl/training/engine.py) and the VQ-GAN
(tokenizers/vqgan_model.py) load through them.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch


def check_finite(state: dict[str, torch.Tensor], source: Path) -> None:
    """ValueError naming the first weights in `state` that hold NaN or infinity."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(
            f"{source}: weights {bad[:3]} hold NaN or infinite values (a diverged run?); "
            "they cannot make a working model"
        )


def _deepspeed_state_types() -> list[Any]:
    """The plain-data classes DeepSpeed's ZeRO optimiser files hold (loss scaler state,
    the stage enum, fragment addresses): allowed by name, nothing else is."""
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address
    except ImportError:
        return []
    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def safe_torch_load(path: Path, map_location: Any = "cpu") -> Any:
    """`torch.load` of one of unicl's own checkpoint files, refusing anything but tensors and
    plain containers (a pickle can run arbitrary code when loaded)."""
    try:
        with torch.serialization.safe_globals(_deepspeed_state_types()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path}: refusing to load it: it holds Python objects other than tensors and "
            f"plain containers, and loading those could run code ({str(err).splitlines()[0]})"
        ) from err
    except (RuntimeError, EOFError) as err:
        raise ValueError(f"{path}: not a readable checkpoint file (truncated?): {err}") from err
