"""Training the VQ-GAN quantizer on the shapes world or any COCO-style image set.

The paper's tokenizers (arXiv 2312.02520): one VQ-GAN encodes both images and
segmentation masks (rendered 0/255). Pretrained VQ-GAN weights cannot be
downloaded here, so unicl trains its own: object-centred square crops
(tasks/transforms.py) of images and of their category masks, reconstruction loss
(L1 + L2), commitment loss, and a codebook that does not collapse:

  - EMA codebook (van den Oord et al. 2017, appendix): codes are moving averages
    of the latents assigned to them, not trained by gradients (the lookup stays
    taming's nearest neighbour, so the state dict stays taming's);
  - data-dependent start and dead-code restarts: codes whose EMA usage falls
    below `dead_threshold` are re-seeded with random latents of the batch
    (both in tokenizers/vqgan_codebook.py).

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
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from unicl.devices import pick_device
from unicl.masks import render_mask, threshold_mask
from unicl.ownership import claim
from unicl.safe_load import check_finite, safe_torch_load
from unicl.tasks.sources import DataConfig, segmentation_pools
from unicl.tasks.transforms import crop_and_resize, object_centred_crop_box
from unicl.tokenizers.vqgan import VQGANTokenizer, save_export
from unicl.tokenizers.vqgan_codebook import CodebookEMA, perplexity
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
    images, masks = [], []
    for record in tqdm(records, desc=desc, unit="rec", leave=False):
        image, mask = record.load_image(), record.load_mask()
        h, w = mask.shape
        for _ in range(per_record if rng is not None else 1):
            box = object_centred_crop_box(record.box, h, w, rng=rng)
            images.append(crop_and_resize(image, box, size, "bicubic"))
            # bilinear on 0/255 then threshold: smoother mask edges than nearest
            grey = crop_and_resize(mask.astype(np.uint8) * 255, box, size, "bilinear")
            masks.append(threshold_mask(grey))
    return np.stack(images), np.stack(masks)


def _records(cfg: VQGANTrainConfig, split: str, limit: int, rng: np.random.Generator) -> list:
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
    """`auto` is the first CUDA device when there is one, else the CPU (unicl/devices.py)."""
    return pick_device(None if name == "auto" else name)


def _setup_torch(cfg: VQGANTrainConfig) -> torch.device:
    """Seed torch, set its threads and CPU/GPU switches; return the device to train on."""
    torch.set_flush_denormal(True)
    device = resolve_device(cfg.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed shapes: autotune the convs
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    return device


@dataclasses.dataclass
class _Parts:
    """What a run trains and saves: the VQ-GAN, its codebook EMA, the optimisers."""

    model: VQGAN
    ema: CodebookEMA
    opt: torch.optim.Optimizer
    disc: torch.nn.Module | None = None  # the patch discriminator, when disc_weight > 0
    disc_opt: torch.optim.Optimizer | None = None

    def state_dict(self) -> dict[str, Any]:
        state = {"model": self.model.state_dict(), "opt": self.opt.state_dict()}
        state["ema"] = self.ema.state_dict()
        if self.disc is not None:
            state["disc"], state["disc_opt"] = self.disc.state_dict(), self.disc_opt.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.ema.load_state_dict(state["ema"])
        if self.disc is not None and "disc" in state:
            self.disc.load_state_dict(state["disc"])
            self.disc_opt.load_state_dict(state["disc_opt"])


def _build_parts(cfg: VQGANTrainConfig, device: torch.device) -> _Parts:
    model = VQGAN(cfg.model).to(device)
    ema = CodebookEMA(model, cfg.ema_decay)  # takes the codebook out of the optimiser's hands
    params = [p for p in model.parameters() if p.requires_grad]
    parts = _Parts(model, ema, torch.optim.Adam(params, lr=cfg.lr, betas=(0.5, 0.9)))
    if cfg.disc_weight > 0:
        from taming.modules.discriminator.model import NLayerDiscriminator

        parts.disc = NLayerDiscriminator(input_nc=3, ndf=32, n_layers=2).to(device)
        parts.disc_opt = torch.optim.Adam(parts.disc.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
    return parts


@dataclasses.dataclass
class _Clock:
    """Seconds of training over all runs of one `out`: CPU (process) time and wall time."""

    cpu_before: float = 0.0  # spent before this run started (from the checkpoint)
    wall_before: float = 0.0
    cpu_start: float = 0.0  # time.process_time() / time.time() when this run started
    wall_start: float = 0.0

    def start(self) -> None:
        self.cpu_start, self.wall_start = time.process_time(), time.time()

    def cpu(self) -> float:
        return self.cpu_before + time.process_time() - self.cpu_start

    def wall(self) -> float:
        return self.wall_before + time.time() - self.wall_start


def _resume(parts: _Parts, path: Path, device: torch.device) -> tuple[int, _Clock]:
    """Load a checkpoint into `parts` and torch's RNG; returns (its step, its clock)."""
    state = safe_torch_load(path, map_location=device)
    try:
        parts.load_state_dict(state)
    except (KeyError, TypeError, RuntimeError, ValueError) as err:
        raise ValueError(
            f"{path} does not match this config (model, optimiser or codebook "
            f"differ: {str(err).splitlines()[0]}); use another out= to start a new run, "
            "or resume=false to start over in this one"
        ) from err
    check_finite(state["model"], path)
    torch.set_rng_state(state["torch_rng"].cpu())
    clock = _Clock(float(state["elapsed"]), float(state.get("wall_elapsed", 0.0)))
    return int(state["step"]), clock


def _save_checkpoint(parts: _Parts, out: Path, step: int, clock: _Clock) -> None:
    """Write `checkpoint.pt` through a temporary file: a crash never leaves half of one."""
    state = parts.state_dict()
    state.update(step=step, elapsed=clock.cpu(), torch_rng=torch.get_rng_state())
    state["wall_elapsed"] = clock.wall()
    torch.save(state, out / (CHECKPOINT_FILE + ".tmp"))
    (out / (CHECKPOINT_FILE + ".tmp")).replace(out / CHECKPOINT_FILE)


def _progress(cfg: VQGANTrainConfig, step: int, clock: _Clock) -> float:
    """How far the run is (1 = done): its steps, or more where a time budget is spent faster."""
    progress = step / cfg.steps
    for spent, minutes in ((clock.cpu(), cfg.max_cpu_minutes), (clock.wall(), cfg.max_minutes)):
        if minutes:
            progress = max(progress, spent / (60 * minutes))
    return progress


def _sample_batch(
    images: np.ndarray, rendered: np.ndarray, n_img: int, n_masks: int, rng: np.random.Generator
) -> np.ndarray:
    """(n_img + n_masks, s, s, 3) uint8: random crops, then random rendered masks; each
    flipped left-right with probability 1/2."""
    pick_i = rng.integers(0, len(images), n_img)
    pick_m = rng.integers(0, len(images), n_masks)
    batch = np.concatenate([images[pick_i], rendered[pick_m]])  # (B, s, s, 3)
    flip = rng.random(len(batch)) < 0.5
    batch[flip] = batch[flip, :, ::-1]
    return batch


class _StepResult(NamedTuple):
    rec: torch.Tensor  # (B, 3, s, s) reconstruction in [-1, 1] (roughly)
    codes: torch.Tensor  # (B, h, w) nearest codes
    losses: dict[str, torch.Tensor]  # "loss" (the total), "l1", "l2", "commit"
    restarted: int  # dead codes re-seeded at this step


def _train_step(cfg: VQGANTrainConfig, parts: _Parts, x: torch.Tensor, step: int) -> _StepResult:
    """One optimiser step on x (B, 3, s, s), then the codebook's EMA update and restarts."""
    rec, z, z_q, codes = parts.model(x)
    l1 = (rec - x).abs().mean()
    l2 = ((rec - x) ** 2).mean()
    commit = F.mse_loss(z, z_q.detach())
    loss = cfg.l1_weight * l1 + cfg.l2_weight * l2 + cfg.model.beta * commit
    use_disc = parts.disc is not None and step >= cfg.disc_start
    if use_disc:
        loss = loss - cfg.disc_weight * parts.disc(rec).mean()  # hinge generator loss
    parts.opt.zero_grad(set_to_none=True)
    loss.backward()
    parts.opt.step()
    if use_disc:
        d_loss = F.relu(1 - parts.disc(x)).mean() + F.relu(1 + parts.disc(rec.detach())).mean()
        parts.disc_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        parts.disc_opt.step()
    parts.ema.update(z.detach(), codes)
    restarted = 0
    if step % cfg.restart_every == 0:
        restarted = parts.ema.restart_dead(z.detach(), cfg.dead_threshold)
    losses = {"loss": loss, "l1": l1, "l2": l2, "commit": commit}
    return _StepResult(rec, codes, losses, restarted)


def _log_row(
    cfg: VQGANTrainConfig, step: int, lr: float, batch: np.ndarray, n_masks: int,
    result: _StepResult, ema: CodebookEMA, clock: _Clock,
) -> dict[str, Any]:  # fmt: skip
    """One `train_log.jsonl` row: losses, the batch's PSNR and mask IoU, codebook use."""
    with torch.no_grad():
        r8 = ((result.rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu()
    r8 = r8.numpy()  # (B, s, s, 3) uint8
    n_img = len(batch) - n_masks
    gt = threshold_mask(batch[n_img:, :, :, 0])  # (n_masks, s, s) the masks of this batch
    row: dict[str, Any] = {"step": step}
    row.update({name: value.item() for name, value in result.losses.items()})
    row.update({
        "lr": lr,
        "psnr_images": float(psnr(batch[:n_img], r8[:n_img]).mean()) if n_img else None,
        "mask_iou": float(mask_iou(gt, threshold_mask(r8[n_img:].mean(-1))).mean())
        if n_masks else None,
        "perplexity": perplexity(result.codes, cfg.model.n_embed),
        "dead_codes": int((ema.count < cfg.dead_threshold).sum()),
        "restarted": result.restarted, "cpu_s": round(clock.cpu(), 1),
        "wall_s": round(clock.wall(), 1),
    })  # fmt: skip
    return row


def _train_loop(
    cfg: VQGANTrainConfig, parts: _Parts, images: np.ndarray, rendered: np.ndarray,
    rng: np.random.Generator, step: int, clock: _Clock, out: Path,
) -> int:  # fmt: skip
    """Train from `step` to cfg.steps or the end of a time budget, checkpointing; returns the
    step it stopped at. `images` and `rendered` (N, s, s, 3): the crops and rendered masks."""
    device = next(parts.model.parameters()).device
    n_masks = int(round(cfg.batch_size * cfg.mask_fraction))
    clock.start()
    parts.model.train()
    bar = tqdm(total=cfg.steps, initial=step, desc="train-vqgan", unit="step")
    with (out / LOG_FILE).open("a") as log:
        while step < cfg.steps:
            progress = _progress(cfg, step, clock)
            if progress >= 1.0:
                break
            lr = _lr(cfg, step, progress)
            for group in parts.opt.param_groups:
                group["lr"] = lr
            batch = _sample_batch(images, rendered, cfg.batch_size - n_masks, n_masks, rng)
            result = _train_step(cfg, parts, to_input(batch, device), step)
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                row = _log_row(cfg, step, lr, batch, n_masks, result, parts.ema, clock)
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.set_postfix(
                    l1=f"{row['l1']:.3f}", ppl=f"{row['perplexity']:.0f}", iou=row["mask_iou"]
                )
            if step % cfg.checkpoint_every == 0:
                _save_checkpoint(parts, out, step, clock)
    bar.close()
    _save_checkpoint(parts, out, step, clock)
    return step


def train_vqgan(cfg: VQGANTrainConfig) -> dict[str, Any]:
    """Train (or resume) per `cfg`; export the model to `out/export`; return the val report."""
    device = _setup_torch(cfg)
    out = claim(cfg.out, "vqgan", "out")  # never writes into a folder unicl did not make
    rng = np.random.default_rng(cfg.seed)
    size = cfg.model.resolution
    train_records = _records(cfg, "train", cfg.max_records, rng)
    images, masks = make_crops(train_records, size, cfg.crops_per_record, rng, "train crops")
    rendered = np.stack([render_mask(m) for m in masks])  # (N, s, s, 3)

    parts = _build_parts(cfg, device)
    step, clock = 0, _Clock()
    if cfg.resume and (out / CHECKPOINT_FILE).is_file():
        step, clock = _resume(parts, out / CHECKPOINT_FILE, device)
        rng = np.random.default_rng([cfg.seed, step])
    elif (out / LOG_FILE).exists():
        (out / LOG_FILE).unlink()  # a fresh run starts a fresh log
    step = _train_loop(cfg, parts, images, rendered, rng, step, clock, out)
    cpu_minutes = round(clock.cpu() / 60, 2)

    parts.model.eval()
    export = save_export(parts.model, out / EXPORT_DIR)
    val_records = _records(cfg, "val", cfg.val_records, np.random.default_rng(cfg.seed + 1))
    val_images, val_masks = make_crops(val_records, size, 1, None, "val crops")
    tokenizer = VQGANTokenizer.from_model(parts.model, device=str(device))
    report = evaluate(tokenizer, val_images, val_masks)
    report.update({
        "steps": step, "device": device.type, "train_cpu_minutes": cpu_minutes,
        "train_wall_minutes": round(clock.wall() / 60, 2), "export": str(export),
    })  # fmt: skip
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    return report
