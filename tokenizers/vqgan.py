"""The "vqgan" tokenizer: images and masks <-> VQ-GAN codes (arXiv 2312.02520, tokenizers).

An image becomes the (h*w,) codes of its grid in raster order; a segmentation
mask is rendered as a 0/255 3-channel image, encoded by the same quantizer (masks
as images: arXiv 2312.02520), and read back by thresholding the decoded image at
127 (unicl/masks.py).

Input rule: images are RGB uint8, given as PIL images (mode "RGB"), (H, W, 3)
arrays/tensors, lists of those, or (B, H, W, 3) batches. An image whose size is
not `resolution` x `resolution` is resized to it (bicubic; masks bilinear and
re-thresholded) without cropping, so the aspect ratio is not preserved and
`decode(..., size=(H, W))` maps the result back onto the original pixels.
Cropping to the object is the task's job (tasks/transforms.py), not this one's.

Weights come from (options, first match):
  - `checkpoint`: our export (a `vqgan.safetensors` file, or a directory holding
    one, with its config in `vqgan.json` beside it), or `builtin:NAME` for a
    quantizer shipped in unicl/assets/NAME (default: `builtin:vqgan_shapes_tiny`);
  - `taming_ckpt` + `taming_config`: a taming-transformers `.ckpt` and its yaml;
  - `checkpoint: null` with `config: {...}`: a freshly initialised (untrained)
    model, for training.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from unicl.masks import MASK_THRESHOLD, render_mask
from unicl.tokenizers.base import TOKENIZERS, Tokenizer, uint8_mask
from unicl.tokenizers.vqgan_model import VQGAN, VQGANConfig, load_model_state

BUILTIN_PREFIX = "builtin:"
DEFAULT_CHECKPOINT = "builtin:vqgan_shapes_tiny"
WEIGHTS_FILE = "vqgan.safetensors"
CONFIG_FILE = "vqgan.json"


def builtin_dir(name: str) -> Path:
    """The directory of a quantizer shipped with unicl (unicl/assets/NAME)."""
    path = Path(str(resources.files("unicl") / "assets" / name))
    if not (path / WEIGHTS_FILE).is_file():
        root = path.parent
        known = (
            sorted(p.name for p in root.iterdir() if (p / WEIGHTS_FILE).is_file())
            if root.is_dir()
            else []
        )
        raise FileNotFoundError(f"no built-in VQ-GAN {name!r}; shipped: {known or '(none)'}")
    return path


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """`builtin:NAME`, a directory or a .safetensors path -> the weights file."""
    text = str(checkpoint)
    if text.startswith(BUILTIN_PREFIX):
        return builtin_dir(text[len(BUILTIN_PREFIX) :]) / WEIGHTS_FILE
    path = Path(text).expanduser()
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"vqgan checkpoint {path} not found (expected {WEIGHTS_FILE})")
    return path


def load_export(weights: Path) -> VQGAN:
    """A VQGAN from our export: weights (safetensors) + `vqgan.json` beside them."""
    config_path = weights.with_name(CONFIG_FILE)
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: the config of {weights} is missing")
    config = VQGANConfig.from_dict(json.loads(config_path.read_text())["config"])
    return load_model_state(VQGAN(config), load_file(str(weights)), weights)


def save_export(model: VQGAN, directory: str | Path) -> Path:
    """Write `model` as `vqgan.safetensors` + `vqgan.json` into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    meta = {"format": "unicl-vqgan", "version": 1, "config": model.config.to_dict()}
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    return directory / WEIGHTS_FILE


def load_taming(ckpt_path: str | Path, config_yaml_path: str | Path) -> VQGAN:
    """A VQGAN from a taming-transformers checkpoint (`state_dict` inside) and its yaml."""
    ckpt_path, config_yaml_path = Path(ckpt_path), Path(config_yaml_path)
    for path in (ckpt_path, config_yaml_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such taming checkpoint/config file")
    config = VQGANConfig.from_taming(yaml.safe_load(config_yaml_path.read_text()) or {})
    try:
        # never unpickle arbitrary objects (docs/tokenizers.md "Loading taming-transformers
        # checkpoints")
        blob = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError and friends, whose types vary by torch version
        raise ValueError(
            f"{ckpt_path}: cannot be read with weights_only=True ({err}). Checkpoints that "
            f"pickle training objects (e.g. Lightning callbacks) must first be reduced to "
            f'{{"state_dict": ...}} on a machine where you trust them; see docs/tokenizers.md.'
        ) from err
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise ValueError(
            f"{ckpt_path}: expected a dict with a 'state_dict', got {type(blob).__name__}"
        )
    return load_model_state(VQGAN(config), state, ckpt_path)


# --------------------------------------------------------------------------- #
# payload conversion
# --------------------------------------------------------------------------- #


def _image_array(image: Any, what: str) -> np.ndarray:
    """One image -> (H, W, 3) uint8 array, or a clear error."""
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            raise ValueError(
                f"{what}: PIL image has mode {image.mode!r}; convert it with .convert('RGB')"
            )
        return np.asarray(image)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"{what}: expected a PIL image or an (H, W, 3) uint8 array, got {type(image).__name__}"
        )
    if image.dtype != np.uint8:
        raise TypeError(f"{what}: images must be uint8 (0..255), got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            f"{what}: expected shape (H, W, 3) (RGB, channels last), got {image.shape}"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{what}: image has no pixels, shape {image.shape}")
    return image


def _mask_array(mask: Any, what: str) -> np.ndarray:
    """One mask -> (H, W) bool array. bool as is; uint8 is 0/255 (> 127 is foreground)."""
    if isinstance(mask, Image.Image):
        if mask.mode not in ("1", "L"):
            raise ValueError(f"{what}: a PIL mask must have mode '1' or 'L', got {mask.mode!r}")
        mask = np.asarray(mask)
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"{what}: expected an (H, W) bool or uint8 mask, got {type(mask).__name__}")
    if mask.ndim != 2 or mask.shape[0] < 1 or mask.shape[1] < 1:
        raise ValueError(f"{what}: a mask must have shape (H, W), got {mask.shape}")
    if mask.dtype == np.bool_:
        return mask
    if mask.dtype != np.uint8:
        raise TypeError(f"{what}: masks must be bool or uint8 (0/255), got dtype {mask.dtype}")
    return uint8_mask(mask, what)


def _split_batch(payload: Any) -> tuple[list[Any], bool]:
    """(list of single items, whether the payload was a single item)."""
    if isinstance(payload, (list, tuple)):
        if not payload:
            raise ValueError("vqgan: nothing to encode (empty list)")
        return list(payload), False
    return [payload], True


def resize_image(image: np.ndarray, resolution: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (resolution, resolution, 3), bicubic, no crop."""
    if image.shape[:2] == (resolution, resolution):
        return image
    return np.asarray(Image.fromarray(image).resize((resolution, resolution), Image.BICUBIC))


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool -> bool of `size` (H', W'): bilinear on 0/1, re-thresholded at 0.5."""
    if mask.shape == tuple(size):
        return mask
    grey = Image.fromarray(mask.astype(np.float32), mode="F")
    return np.asarray(grey.resize((size[1], size[0]), Image.BILINEAR)) > 0.5


@TOKENIZERS.register("vqgan")
class VQGANTokenizer(Tokenizer):
    """Images and masks <-> VQ-GAN codes (n_embed ids, grid**2 codes per image)."""

    name = "vqgan"
    modality = "image"

    def __init__(
        self,
        checkpoint: str | None = DEFAULT_CHECKPOINT,
        taming_ckpt: str | None = None,
        taming_config: str | None = None,
        config: dict[str, Any] | None = None,
        batch_size: int = 64,
        device: str = "cpu",
    ) -> None:
        if (taming_ckpt is None) != (taming_config is None):
            raise ValueError("vqgan: taming_ckpt and taming_config must be given together")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"vqgan: batch_size must be a positive int, got {batch_size!r}")
        if taming_ckpt is not None:
            model = load_taming(taming_ckpt, taming_config)
            checkpoint = None
        elif checkpoint is not None:
            if config is not None:
                raise ValueError(
                    "vqgan: give either checkpoint or config (a fresh model), not both"
                )
            model = load_export(resolve_checkpoint(checkpoint))
        else:
            model = VQGAN(VQGANConfig.from_dict(config or {}))
        self._options = {
            "checkpoint": checkpoint,
            "taming_ckpt": taming_ckpt,
            "taming_config": taming_config,
            "config": config,
            "batch_size": batch_size,
            "device": device,
        }
        self._setup(model, batch_size, device)

    def _setup(self, model: VQGAN, batch_size: int, device: str) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.config = model.config
        self.batch_size = batch_size

    @classmethod
    def from_model(cls, model: VQGAN, batch_size: int = 64, device: str = "cpu") -> VQGANTokenizer:
        """Wrap an in-memory VQGAN (e.g. one being trained); `save` writes its weights."""
        tok = cls.__new__(cls)
        tok._options = {
            "checkpoint": None,
            "taming_ckpt": None,
            "taming_config": None,
            "config": model.config.to_dict(),
            "batch_size": batch_size,
            "device": device,
        }
        tok._setup(model, batch_size, device)
        return tok

    @classmethod
    def from_taming(
        cls, ckpt_path: str | Path, config_yaml_path: str | Path, **kwargs: Any
    ) -> VQGANTokenizer:
        """Load a taming-transformers checkpoint (`.ckpt` with `state_dict`) and its yaml."""
        return cls(
            checkpoint=None,
            taming_ckpt=str(ckpt_path),
            taming_config=str(config_yaml_path),
            **kwargs,
        )

    @property
    def vocab_size(self) -> int:
        return self.config.n_embed

    @property
    def codes_per_image(self) -> int:
        """Codes per image (grid ** 2): 64 for the tiny config, 256 for the paper's."""
        return self.config.n_codes

    # ---- images ---------------------------------------------------------- #

    def _images_to_tensor(self, arrays: list[np.ndarray]) -> torch.Tensor:
        batch = np.stack([resize_image(a, self.config.resolution) for a in arrays])  # (B, H, W, 3)
        x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float()  # (B, 3, H, W)
        return x / 127.5 - 1.0  # taming's [-1, 1] input range

    def _encode_arrays(self, arrays: list[np.ndarray]) -> torch.Tensor:
        if self.device.type == "cpu":
            torch.set_flush_denormal(True)
        out = []
        with torch.inference_mode():
            for start in range(0, len(arrays), self.batch_size):
                x = self._images_to_tensor(arrays[start : start + self.batch_size])
                out.append(self.model.encode_codes(x).reshape(x.shape[0], -1).cpu())  # (b, h*w)
        return torch.cat(out).long()  # (B, h*w)

    def _images(self, images: Any) -> tuple[list[np.ndarray], bool]:
        if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
            return [_image_array(im, f"vqgan: images[{i}]") for i, im in enumerate(images)], False
        items, single = _split_batch(images)
        return [_image_array(im, f"vqgan: images[{i}]") for i, im in enumerate(items)], single

    def encode(self, payload: Any) -> torch.Tensor:
        """Image(s) -> int64 codes: one image -> (h*w,), a batch -> (B, h*w)."""
        arrays, single = self._images(payload)
        codes = self._encode_arrays(arrays)
        return codes[0] if single else codes

    def encode_batch(self, payloads: Sequence[Any]) -> list[torch.Tensor]:
        return list(self.encode(list(payloads)))

    def _codes(self, codes: torch.Tensor | Sequence[int] | np.ndarray) -> tuple[torch.Tensor, bool]:
        ids = torch.as_tensor(np.asarray(codes) if not isinstance(codes, torch.Tensor) else codes)
        single = ids.dim() == 1
        if ids.dim() not in (1, 2) or ids.shape[-1] != self.codes_per_image:
            raise ValueError(
                f"vqgan: expected {self.codes_per_image} codes per image, shape (n,) or (B, n); "
                f"got shape {tuple(ids.shape)}"
            )
        flat = self.check_ids(ids)
        return flat.reshape(-1, self.config.grid, self.config.grid), single  # (B, h, w)

    def _decode_float(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) -> images (B, H, W, 3) float in [0, 255]."""
        if self.device.type == "cpu":
            torch.set_flush_denormal(True)
        out = []
        with torch.inference_mode():
            for start in range(0, codes.shape[0], self.batch_size):
                chunk = codes[start : start + self.batch_size].to(self.device)
                x = self.model.decode_codes(chunk).clamp(-1.0, 1.0)  # (b, 3, H, W)
                out.append(((x + 1.0) * 127.5).permute(0, 2, 3, 1).cpu())  # (b, H, W, 3)
        return torch.cat(out)

    def decode(self, ids: Any, size: tuple[int, int] | None = None) -> np.ndarray:
        """Codes (h*w,) or (B, h*w) -> uint8 image(s) (H, W, 3) or (B, H, W, 3).

        `size=(H, W)` resizes the result (bicubic), e.g. back to the original image.
        """
        codes, single = self._codes(ids)
        images = self._decode_float(codes).round().to(torch.uint8).numpy()
        if size is not None:
            images = np.stack(
                [
                    np.asarray(Image.fromarray(im).resize((size[1], size[0]), Image.BICUBIC))
                    for im in images
                ]
            )
        return images[0] if single else images

    def decode_batch(self, ids: Sequence[Any]) -> list[np.ndarray]:
        return list(self.decode(torch.stack([torch.as_tensor(i) for i in ids])))

    def code_vectors(self) -> torch.Tensor:
        """(n_embed, embed_dim) the codebook: what each code looks like to the decoder."""
        return self.model.quantize.embedding.weight.detach().float().cpu()

    # ---- masks ----------------------------------------------------------- #

    def encode_mask(self, masks: Any) -> torch.Tensor:
        """Mask(s) (H, W) bool or 0/255 uint8 -> codes of their 0/255 rendering."""
        if isinstance(masks, (np.ndarray, torch.Tensor)) and masks.ndim == 3:
            masks = list(masks)
        items, single = _split_batch(masks)
        size = (self.config.resolution, self.config.resolution)
        rendered = [
            render_mask(resize_mask(_mask_array(m, f"vqgan: masks[{i}]"), size))
            for i, m in enumerate(items)
        ]
        codes = self._encode_arrays(rendered)
        return codes[0] if single else codes

    def decode_mask(self, ids: Any, size: tuple[int, int] | None = None) -> np.ndarray:
        """Codes -> bool mask(s) (H, W) / (B, H, W): decoded grey level > 127.

        With `size=(H, W)` the grey image is resized (bilinear) before thresholding,
        which gives smoother edges than resizing the thresholded mask.
        """
        codes, single = self._codes(ids)
        grey = self._decode_float(codes).mean(dim=-1)  # (B, H, W)
        if size is not None and tuple(size) != tuple(grey.shape[1:]):
            grey = torch.nn.functional.interpolate(
                grey[:, None], size=tuple(size), mode="bilinear", align_corners=False
            )[:, 0]
        masks = (grey > MASK_THRESHOLD).numpy()
        return masks[0] if single else masks

    # ---- saving ---------------------------------------------------------- #

    def options(self) -> dict[str, Any]:
        return dict(self._options)

    def save_files(self, directory: Path) -> dict[str, Any]:
        save_export(self.model, directory)
        return {
            "checkpoint": WEIGHTS_FILE,
            "taming_ckpt": None,
            "taming_config": None,
            "config": None,
        }
