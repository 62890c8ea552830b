"""The VQ-GAN's codebook during training: EMA updates and dead-code restarts.

Codes are moving averages of the latents assigned to them, not trained by
gradients (van den Oord et al. 2017, appendix), started from real latents; codes
whose EMA usage falls below a threshold are re-seeded with random latents of the
batch, so that the codebook does not collapse (tokenizers/vqgan_train.py uses
both). The lookup stays taming's nearest neighbour, so the state dict stays
taming's: `CodebookEMA` writes `quantize.embedding.weight` in place.

Letters: K codes, D code width, N latents of a batch, B batch, h x w latent grid.
"""

from __future__ import annotations

from typing import Any

import torch

from unicl.tokenizers.vqgan_model import VQGAN


class CodebookEMA:
    """Moving averages that set taming's `quantize.embedding.weight` (K, D) directly."""

    def __init__(self, model: VQGAN, decay: float, eps: float = 1e-5) -> None:
        self.weight = model.quantize.embedding.weight  # (K, D), updated in place
        self.weight.requires_grad_(False)
        k = self.weight.shape[0]
        self.decay, self.eps = decay, eps
        self.count = torch.zeros(k, device=self.weight.device)  # (K,) EMA of assignments per step
        self.total = self.weight.detach().clone()  # (K, D) EMA of summed latents
        self.initialised = False

    @torch.no_grad()
    def update(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        """z (B, D, h, w) latents, codes (B, h, w) their nearest codes."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (N, D)
        idx = codes.reshape(-1)  # (N,)
        k = self.weight.shape[0]
        if not self.initialised:
            # start from real latents so that every code is near the data
            self.weight.copy_(flat[torch.randint(0, flat.shape[0], (k,), device=flat.device)])
            self.total.copy_(self.weight)
            self.count.fill_(1.0)
            self.initialised = True
            return
        counts = torch.bincount(idx, minlength=k).float()  # (K,)
        sums = torch.zeros_like(self.total).index_add_(0, idx, flat)  # (K, D)
        self.count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.total.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        # Laplace smoothing keeps unused codes finite
        n = self.count.sum()
        smoothed = (self.count + self.eps) / (n + k * self.eps) * n  # (K,)
        self.weight.copy_(self.total / smoothed[:, None])

    @torch.no_grad()
    def restart_dead(self, z: torch.Tensor, threshold: float) -> int:
        """Re-seed codes used less than `threshold` per step with random latents of `z`."""
        dead = (self.count < threshold).nonzero().reshape(-1)  # (n_dead,)
        if dead.numel() == 0:
            return 0
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (N, D)
        pick = flat[torch.randint(0, flat.shape[0], (dead.numel(),), device=flat.device)]
        pick = pick + 0.01 * pick.std() * torch.randn_like(pick)
        self.weight[dead] = pick
        self.total[dead] = pick
        self.count[dead] = 1.0
        return int(dead.numel())

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "total": self.total, "initialised": self.initialised}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count.copy_(state["count"])
        self.total.copy_(state["total"])
        self.initialised = bool(state["initialised"])


def perplexity(codes: torch.Tensor, k: int) -> float:
    """exp(entropy) of the code histogram: how many codes are effectively used."""
    p = torch.bincount(codes.reshape(-1), minlength=k).float()
    p = p / p.sum()
    return float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))
