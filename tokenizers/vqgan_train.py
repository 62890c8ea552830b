"""Training the VQ-GAN quantizer on the shapes world or any COCO-style image set.

The paper's tokenizers (arXiv 2312.02520): one VQ-GAN encodes both images and
segmentation masks (rendered 0/255). Pretrained VQ-GAN weights cannot be
downloaded here, so unicl trains its own: object-centred square crops
(tasks/transforms.py) of images and of their category masks, reconstruction loss
(L1 + L2), commitment loss, and a codebook that does not collapse:

  - EMA codebook (van den Oord et al. 2017, appendix): codes are moving averages
    of the latents assigned to them, not trained by gradients. The lookup stays
    taming's nearest neighbour, so the state dict stays taming's;
  - data-dependent start and dead-code restarts: codes whose EMA usage falls
    below `dead_threshold` are re-seeded with random latents of the batch.

An optional patch discriminator (taming's NLayerDiscriminator, hinge loss) can
be switched on; LPIPS is not used (its VGG weights cannot be obtained offline).
Progress: tqdm bar; `train_log.jsonl` gets loss, PSNR, perplexity and dead codes;
`checkpoint.pt` (tensors only, loaded with weights_only=True) allows resuming.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from unicl.model_files import check_finite, safe_torch_load
from unicl.ownership import claim
from unicl.tasks.data import DataConfig
from unicl.tokenizers.vqgan import render_mask, save_export
from unicl.tokenizers.vqgan_model import VQGAN, VQGANConfig

LOG_FILE = "train_log.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
EXPORT_DIR = "export"


@dataclasses.dataclass
class VQGANTrainConfig:
    """`unicl train-vqgan` options (configs/vqgan_tiny.yaml is the tiny default)."""

    out: str = "runs/vqgan"  # output directory: log, checkpoint, export/
    seed: int = 0
    model: VQGANConfig = dataclasses.field(default_factory=VQGANConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    max_records: int = 4000  # train records (image, category) cropped into the pool
    crops_per_record: int = 2  # random object-centred crops per record
    val_records: int = 300  # held-out val crops for the final quality report
    mask_fraction: float = 0.5  # share of each batch that are rendered masks
    steps: int = 2000
    # stop after this much CPU time of the training loop (process time, all threads), which
    # the LR schedule also counts as progress; 0 = no limit. CPU time, not wall time, so a
    # budget means the same work on a busy shared machine.
    max_cpu_minutes: float = 0.0
    # stop after this much wall-clock time of the training loop (the budget to use on a GPU,
    # where the work is not CPU time); 0 = no limit. Whichever budget runs out first stops it.
    max_minutes: float = 0.0
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 50
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    ema_decay: float = 0.95
    dead_threshold: float = 0.03  # EMA assignments per step below which a code is dead
    restart_every: int = 25
    disc_weight: float = 0.0  # 0 = no discriminator
    disc_start: int = 0
    log_every: int = 20
    checkpoint_every: int = 200
    resume: bool = True
    threads: int = 0  # torch threads; 0 = torch's default
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...

    def __post_init__(self) -> None:
        positive = ("max_records", "crops_per_record", "steps", "batch_size", "log_every")
        positive += ("checkpoint_every", "restart_every")
        at_least_zero = ("val_records", "warmup", "disc_start", "threads", "seed")
        at_least_zero += ("max_cpu_minutes", "max_minutes", "l1_weight", "l2_weight")
        at_least_zero += ("disc_weight", "dead_threshold")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in at_least_zero:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.mask_fraction <= 1.0:
            raise ValueError(f"mask_fraction must lie in [0, 1], got {self.mask_fraction!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")


# --------------------------------------------------------------------------- #
# data: object-centred crops of images and masks
# --------------------------------------------------------------------------- #


def make_crops(
    records: list, size: int, per_record: int, rng: np.random.Generator | None, desc: str
):
    """(images (N, s, s, 3) uint8, masks (N, s, s) bool) of object-centred crops.

    With `rng=None` the crops are deterministic (evaluation), one per record.
    """
    from unicl.tasks.transforms import crop_and_resize, object_centred_crop_box

    images, masks = [], []
    for record in tqdm(records, desc=desc, unit="rec", leave=False):
        image, mask = record.load_image(), record.load_mask()
        h, w = mask.shape
        for _ in range(per_record if rng is not None else 1):
            box = object_centred_crop_box(record.box, h, w, rng=rng)
            images.append(crop_and_resize(image, box, size, "bicubic"))
            # bilinear on 0/255 then threshold: smoother mask edges than nearest
            grey = crop_and_resize(mask.astype(np.uint8) * 255, box, size, "bilinear")
            masks.append(grey > 127)
    return np.stack(images), np.stack(masks)


def _records(cfg: VQGANTrainConfig, split: str, limit: int, rng: np.random.Generator) -> list:
    from unicl.tasks.data import segmentation_pools

    pools = segmentation_pools(cfg.data, split)
    records = [r for name in sorted(pools) for r in pools[name]]
    if not records:
        raise ValueError(f"no {split} segmentation records to train the VQ-GAN on")
    order = rng.permutation(len(records))[:limit]
    return [records[i] for i in sorted(order)]


def to_input(batch: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1] on `device` (moved as uint8)."""
    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device, non_blocking=True)
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0


# --------------------------------------------------------------------------- #
# codebook: EMA updates and dead-code restarts
# --------------------------------------------------------------------------- #


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


# --------------------------------------------------------------------------- #
# quality
# --------------------------------------------------------------------------- #


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR (dB) of uint8 batches (B, H, W, 3)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return 10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-mask IoU of bool batches (B, H, W); two empty masks count as 1."""
    inter = (a & b).reshape(len(a), -1).sum(1)
    union = (a | b).reshape(len(a), -1).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def evaluate(tokenizer, images: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """Round-trip quality: image PSNR and mask IoU (encode -> decode -> threshold 127)."""
    rec = tokenizer.decode(tokenizer.encode(images))
    rec_masks = tokenizer.decode_mask(tokenizer.encode_mask(list(masks)))
    p, iou = psnr(images, rec), mask_iou(masks, rec_masks)
    return {
        "n": len(images),
        "psnr_mean": float(p.mean()),
        "psnr_median": float(np.median(p)),
        "mask_iou_mean": float(iou.mean()),
        "mask_iou_median": float(np.median(iou)),
        "mask_iou_ge_095": float((iou >= 0.95).mean()),
    }


# --------------------------------------------------------------------------- #
# the loop
# --------------------------------------------------------------------------- #


def _lr(cfg: VQGANTrainConfig, step: int, progress: float) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def resolve_device(name: str) -> torch.device:
    """`auto` is the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r}, but CUDA is not available here")
    return device


def train_vqgan(cfg: VQGANTrainConfig) -> dict[str, Any]:
    """Train (or resume) per `cfg`; export the model to `out/export`; return the val report."""
    from unicl.tokenizers.vqgan import VQGANTokenizer

    torch.set_flush_denormal(True)
    device = resolve_device(cfg.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed shapes: autotune the convs
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = claim(cfg.out, "vqgan", "out")  # never writes into a folder unicl did not make
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    size = cfg.model.resolution

    train_records = _records(cfg, "train", cfg.max_records, rng)
    images, masks = make_crops(train_records, size, cfg.crops_per_record, rng, "train crops")
    rendered = np.stack([render_mask(m) for m in masks])  # (N, s, s, 3)

    model = VQGAN(cfg.model).to(device)
    ema = CodebookEMA(model, cfg.ema_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.5, 0.9))
    disc = disc_opt = None
    if cfg.disc_weight > 0:
        from taming.modules.discriminator.model import NLayerDiscriminator

        disc = NLayerDiscriminator(input_nc=3, ndf=32, n_layers=2).to(device)
        disc_opt = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.9))

    step, elapsed_before, wall_before = 0, 0.0, 0.0
    ckpt_path = out / CHECKPOINT_FILE
    if cfg.resume and ckpt_path.is_file():
        state = safe_torch_load(ckpt_path, map_location=device)
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            ema.load_state_dict(state["ema"])
            if disc is not None and "disc" in state:
                disc.load_state_dict(state["disc"])
                disc_opt.load_state_dict(state["disc_opt"])
        except (KeyError, TypeError, RuntimeError, ValueError) as err:
            raise ValueError(
                f"{ckpt_path} does not match this config (model, optimiser or codebook "
                f"differ: {str(err).splitlines()[0]}); use another out= to start a new run, "
                "or resume=false to start over in this one"
            ) from err
        check_finite(state["model"], ckpt_path)
        step, elapsed_before = int(state["step"]), float(state["elapsed"])
        wall_before = float(state.get("wall_elapsed", 0.0))
        torch.set_rng_state(state["torch_rng"].cpu())
        rng = np.random.default_rng([cfg.seed, step])
    elif (out / LOG_FILE).exists():
        (out / LOG_FILE).unlink()  # a fresh run starts a fresh log

    def save_checkpoint() -> None:
        state = {
            "model": model.state_dict(), "opt": opt.state_dict(), "ema": ema.state_dict(),
            "step": step, "elapsed": elapsed, "torch_rng": torch.get_rng_state(),
            "wall_elapsed": wall_before + time.time() - wall_start,
        }  # fmt: skip
        if disc is not None:
            state["disc"], state["disc_opt"] = disc.state_dict(), disc_opt.state_dict()
        torch.save(state, out / (CHECKPOINT_FILE + ".tmp"))
        (out / (CHECKPOINT_FILE + ".tmp")).replace(ckpt_path)

    n_masks = int(round(cfg.batch_size * cfg.mask_fraction))
    start, wall_start = time.process_time(), time.time()
    elapsed = elapsed_before
    model.train()
    bar = tqdm(total=cfg.steps, initial=step, desc="train-vqgan", unit="step")
    with (out / LOG_FILE).open("a") as log:
        while step < cfg.steps:
            elapsed = elapsed_before + time.process_time() - start
            wall = wall_before + time.time() - wall_start
            progress = step / cfg.steps
            for spent, minutes in ((elapsed, cfg.max_cpu_minutes), (wall, cfg.max_minutes)):
                if minutes:
                    progress = max(progress, spent / (60 * minutes))
            if progress >= 1.0:
                break
            lr = _lr(cfg, step, progress)
            for group in opt.param_groups:
                group["lr"] = lr
            pick_i = rng.integers(0, len(images), cfg.batch_size - n_masks)
            pick_m = rng.integers(0, len(images), n_masks)
            batch = np.concatenate([images[pick_i], rendered[pick_m]])  # (B, s, s, 3)
            flip = rng.random(len(batch)) < 0.5
            batch[flip] = batch[flip, :, ::-1]
            x = to_input(batch, device)  # (B, 3, s, s)

            rec, z, z_q, codes = model(x)
            l1 = (rec - x).abs().mean()
            l2 = ((rec - x) ** 2).mean()
            commit = F.mse_loss(z, z_q.detach())
            loss = cfg.l1_weight * l1 + cfg.l2_weight * l2 + cfg.model.beta * commit
            use_disc = disc is not None and step >= cfg.disc_start
            if use_disc:
                loss = loss - cfg.disc_weight * disc(rec).mean()  # hinge generator loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if use_disc:
                d_loss = F.relu(1 - disc(x)).mean() + F.relu(1 + disc(rec.detach())).mean()
                disc_opt.zero_grad(set_to_none=True)
                d_loss.backward()
                disc_opt.step()
            ema.update(z.detach(), codes)
            restarted = 0
            if step % cfg.restart_every == 0:
                restarted = ema.restart_dead(z.detach(), cfg.dead_threshold)
            step += 1
            bar.update(1)

            if step % cfg.log_every == 0 or step == cfg.steps:
                elapsed = elapsed_before + time.process_time() - start
                with torch.no_grad():
                    r8 = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu()
                    r8 = r8.numpy()
                n_img = cfg.batch_size - n_masks
                gt = batch[n_img:, :, :, 0] > 127  # (n_masks, s, s) the masks of this batch
                row = {
                    "step": step, "loss": loss.item(), "l1": l1.item(), "l2": l2.item(),
                    "commit": commit.item(), "lr": lr,
                    "psnr_images": float(psnr(batch[:n_img], r8[:n_img]).mean()) if n_img else None,
                    "mask_iou": float(mask_iou(gt, r8[n_img:].mean(-1) > 127).mean())
                    if n_masks else None,
                    "perplexity": perplexity(codes, cfg.model.n_embed),
                    "dead_codes": int((ema.count < cfg.dead_threshold).sum()),
                    "restarted": restarted, "cpu_s": round(elapsed, 1),
                    "wall_s": round(wall_before + time.time() - wall_start, 1),
                }  # fmt: skip
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.set_postfix(
                    l1=f"{row['l1']:.3f}", ppl=f"{row['perplexity']:.0f}", iou=row["mask_iou"]
                )
            if step % cfg.checkpoint_every == 0:
                save_checkpoint()
    bar.close()
    elapsed = elapsed_before + time.process_time() - start
    save_checkpoint()

    model.eval()
    export = save_export(model, out / EXPORT_DIR)
    val_records = _records(cfg, "val", cfg.val_records, np.random.default_rng(cfg.seed + 1))
    val_images, val_masks = make_crops(val_records, size, 1, None, "val crops")
    report = evaluate(VQGANTokenizer.from_model(model, device=str(device)), val_images, val_masks)
    report.update({
        "steps": step, "device": device.type, "train_cpu_minutes": round(elapsed / 60, 2),
        "train_wall_minutes": round((wall_before + time.time() - wall_start) / 60, 2),
        "export": str(export),
    })  # fmt: skip
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    return report
