"""The VQ-GAN image quantizer network, built from taming-transformers' modules.

The paper's tokenizers (arXiv 2312.02520): images (and masks rendered as images)
become VQ-GAN codes; the paper uses 1024 codes at 16x downsampling, 256 px ->
16x16 = 256 codes. The network is taming's `Encoder` / `Decoder`
(taming.modules.diffusionmodules.model) around taming's nearest-neighbour
`VectorQuantizer2`, with the same attribute names as taming's `VQModel`, so its
state dict has taming's keys (`encoder.*`, `decoder.*`,
`quantize.embedding.weight`, `quant_conv.*`, `post_quant_conv.*`) and taming
checkpoints load unchanged.

Letters: B batch, C channels, H/W pixels, h/w code grid (H / f), D code width
(`embed_dim`), K codebook size (`n_embed`), f downsampling factor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.vqvae.quantize import VectorQuantizer2
from torch import nn

from unicl.safe_load import check_finite

#: state-dict prefixes of the network (taming's VQModel also stores `loss.*`)
MODEL_PREFIXES = ("encoder.", "decoder.", "quantize.", "quant_conv.", "post_quant_conv.")
#: the keys of taming's `ddconfig`
DDCONFIG_KEYS = (
    "double_z", "z_channels", "resolution", "in_channels", "out_ch", "ch", "ch_mult",
    "num_res_blocks", "attn_resolutions", "dropout",
)  # fmt: skip


@dataclasses.dataclass
class VQGANConfig:
    """Taming's `ddconfig` plus the codebook (`n_embed` x `embed_dim`).

    The defaults are the tiny setting of the shipped `builtin:vqgan_shapes_tiny`
    (configs/vqgan_tiny.yaml): 64 px, f8 -> 8x8 = 64 codes per image, 1024 codes (the
    paper's vocabulary count), widths 32/32/64/64, one residual block per level (1.1M
    weights). With num_res_blocks=0 taming's Encoder needs equal widths at every level
    (ch_mult all equal); this is checked. `paper()` gives the paper's f16
    256 px model (taming's ImageNet f16-1024 architecture).
    """

    resolution: int = 64
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 32
    ch_mult: tuple[int, ...] = (1, 1, 2, 2)
    # taming's decoder has num_res_blocks + 1 blocks per level; 0 is its minimum
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = ()
    dropout: float = 0.0
    z_channels: int = 64
    double_z: bool = False
    n_embed: int = 1024
    embed_dim: int = 32
    #: commitment weight (taming's `beta`)
    beta: float = 0.25

    def __post_init__(self) -> None:
        self.ch_mult = tuple(self.ch_mult)
        self.attn_resolutions = tuple(self.attn_resolutions)
        if not self.ch_mult:
            raise ValueError("vqgan config: ch_mult must not be empty")
        for name in ("resolution", "ch", "num_res_blocks", "z_channels", "n_embed", "embed_dim"):
            value = getattr(self, name)
            least = 0 if name == "num_res_blocks" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"vqgan config: {name} must be an int >= {least}, got {value!r}")
        if self.in_channels != 3 or self.out_ch != 3:
            raise ValueError("vqgan config: in_channels and out_ch must be 3 (RGB images)")
        widths = [self.ch * m for m in (1, *self.ch_mult)]
        if any(w % 32 for w in widths):
            # taming normalises with GroupNorm(32 groups)
            raise ValueError(
                f"vqgan config: every width ch * ch_mult must be a multiple of 32, got {widths}"
            )
        if self.num_res_blocks == 0 and len(set(self.ch_mult)) > 1:
            raise ValueError(
                "vqgan config: num_res_blocks=0 needs equal ch_mult entries (taming's Encoder "
                f"only changes width inside residual blocks), got {list(self.ch_mult)}"
            )
        if self.resolution % self.factor:
            raise ValueError(
                f"vqgan config: resolution {self.resolution} is not divisible by the "
                f"downsampling factor {self.factor} (2 ** (len(ch_mult) - 1))"
            )

    @property
    def factor(self) -> int:
        """Downsampling factor f = 2 ** (number of ch_mult levels - 1)."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def grid(self) -> int:
        """Side of the code grid: resolution // f."""
        return self.resolution // self.factor

    @property
    def n_codes(self) -> int:
        """Codes per image: grid ** 2."""
        return self.grid**2

    @classmethod
    def paper(cls) -> VQGANConfig:
        """The paper's quantizer: 256 px, f16, 1024 codes of width 256 (16x16 = 256 codes)."""
        return cls(
            resolution=256, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
            attn_resolutions=(16,), z_channels=256, n_embed=1024, embed_dim=256,
        )  # fmt: skip

    def ddconfig(self) -> dict[str, Any]:
        """Taming's `ddconfig` mapping."""
        out = {k: getattr(self, k) for k in DDCONFIG_KEYS}
        out["ch_mult"] = list(self.ch_mult)
        out["attn_resolutions"] = list(self.attn_resolutions)
        return out

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["ch_mult"] = list(self.ch_mult)
        out["attn_resolutions"] = list(self.attn_resolutions)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VQGANConfig:
        """From our own json/yaml (the fields above); unknown keys are errors."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"vqgan config: unknown keys {unknown}; valid: {sorted(names)}")
        return cls(**data)

    @classmethod
    def from_taming(cls, data: Mapping[str, Any]) -> VQGANConfig:
        """From a taming yaml: the whole file (`model.params...`) or its `params` mapping."""
        params = data
        if "model" in params:
            params = params["model"]
        if "params" in params:
            params = params["params"]
        if "ddconfig" not in params or "n_embed" not in params or "embed_dim" not in params:
            raise ValueError(
                "taming config: expected model.params with ddconfig, n_embed and embed_dim; "
                f"got keys {sorted(params)}"
            )
        dd = params["ddconfig"]
        known = {k: dd[k] for k in DDCONFIG_KEYS if k in dd}
        missing = sorted(set(DDCONFIG_KEYS) - set(dd) - {"dropout", "double_z"})
        if missing:
            raise ValueError(f"taming config: ddconfig lacks {missing}")
        return cls(n_embed=int(params["n_embed"]), embed_dim=int(params["embed_dim"]), **known)


class VQGAN(nn.Module):
    """Encoder -> 1x1 conv -> nearest code -> 1x1 conv -> decoder (taming's VQModel layout).

    Images enter and leave in [-1, 1]. The codebook is taming's
    `VectorQuantizer2` (legacy=True, taming's default), so nearest-code lookup and
    thus codes are identical to taming's for the same weights.
    """

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__()
        self.config = config
        dd = config.ddconfig()
        self.encoder = Encoder(**dd)
        with contextlib.redirect_stdout(io.StringIO()):  # taming's Decoder prints its z shape
            self.decoder = Decoder(**dd)
        self.quantize = VectorQuantizer2(config.n_embed, config.embed_dim, beta=config.beta)
        # project the encoder's z_channels to the code width and back
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> pre-quantisation latents (B, D, h, w)."""
        return self.quant_conv(self.encoder(x))  # (B, D, h, w)

    def quantize_latent(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents (B, D, h, w) -> (straight-through quantised latents, codes (B, h, w))."""
        z_q, _, (_, _, idx) = self.quantize(z)  # taming's lookup; its loss is ignored here
        return z_q, idx.reshape(z.shape[0], z.shape[2], z.shape[3])  # (B, D, h, w), (B, h, w)

    def decode_latent(self, z_q: torch.Tensor) -> torch.Tensor:
        """Quantised latents (B, D, h, w) -> images (B, 3, H, W), roughly in [-1, 1]."""
        return self.decoder(self.post_quant_conv(z_q))

    def codes_to_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) -> codebook vectors (B, D, h, w)."""
        return self.quantize.embedding(codes).permute(0, 3, 1, 2).contiguous()  # (B, D, h, w)

    @torch.no_grad()
    def encode_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> codes (B, h, w)."""
        return self.quantize_latent(self.encode_latent(x))[1]

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) -> images (B, 3, H, W), roughly in [-1, 1]."""
        return self.decode_latent(self.codes_to_latent(codes))

    def forward(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: (reconstruction, latents z, plain quantised z_q, codes)."""
        z = self.encode_latent(x)  # (B, D, h, w)
        z_st, codes = self.quantize_latent(z)
        # z_st carries the straight-through gradient to the encoder; the plain codebook
        # vectors are returned for the commitment loss
        z_q = self.codes_to_latent(codes)
        return self.decode_latent(z_st), z, z_q, codes


def check_state_dict(model: VQGAN, state: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """Raise ValueError if `state` lacks keys of `model` or has tensors of other shapes."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(k for k in state if k.startswith(MODEL_PREFIXES) and k not in own)
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs config {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if wrong:
        problems.append(
            "shape mismatches (does the config match the checkpoint?): " + "; ".join(wrong[:6])
        )
    if missing:
        problems.append(f"missing keys: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected keys: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    if problems:
        raise ValueError(
            f"{source}: checkpoint does not fit the VQ-GAN config: " + " | ".join(problems)
        )


def load_model_state(model: VQGAN, state: Mapping[str, torch.Tensor], source: str | Path) -> VQGAN:
    """Load the network's keys from `state` (other keys such as taming's `loss.*` are ignored)."""
    state = {k: v for k, v in state.items() if k.startswith(MODEL_PREFIXES)}
    check_state_dict(model, state, source)
    check_finite(state, Path(source))  # NaN weights would encode every image to one code
    model.load_state_dict(state, strict=True)
    return model
