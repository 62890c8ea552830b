"""Optimisers and the learning-rate schedule (arXiv 2312.02520, multi-task training strategy).

Task-balanced AdamW (the paper, after Uni-Perceiver v2). When the step's task k
has gradient weight w_k and sampling probability s_k:

    g  = w_k * grad / ||grad||                 (||.|| = global L2 norm, all parameters, all ranks)
    m  = beta1 * m + (1 - beta1) * g / s_k
    v  = beta2 * v + (1 - beta2) * g^2 / s_k
    p -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps) + lr * wd * p

Normalising makes every step's gradient the same size whatever its task's loss
scale; dividing the new-moment weight by s_k lets a rarely sampled task move the
moments as much, per update, as a frequent one (its step is ~1/sqrt(s_k) larger).

It is a plain `torch.optim.Optimizer`, so DeepSpeed accepts it as a client
optimizer. Under ZeRO-0 it sees the model's parameters with gradients already
averaged over ranks (identical everywhere): the norm is local. Under ZeRO-1/2 it
sees this rank's flat partition of the (averaged) fp32 gradient: the squared norms
are summed over the data-parallel group before the square root. The trainer says
which (`partitioned=`) and sets (w_k, s_k) before every step with `set_task`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.distributed as dist


class TaskBalancedAdamW(torch.optim.Optimizer):
    """AdamW whose gradient is normalised to `weight` and whose moments see 1/probability."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.05,
        partitioned: bool = False,
        process_group: dist.ProcessGroup | None = None,
    ) -> None:
        if lr <= 0 or eps <= 0 or weight_decay < 0:
            raise ValueError(f"invalid lr={lr}, eps={eps} or weight_decay={weight_decay}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        #: True when each rank holds a disjoint shard of the gradient (ZeRO >= 1)
        self.partitioned = partitioned
        self.process_group = process_group
        self.task_weight = 1.0
        self.task_probability = 1.0
        #: global gradient norm seen by the last step (before normalisation)
        self.last_grad_norm = float("nan")

    def set_task(self, weight: float, probability: float) -> None:
        """Set w_k and s_k of the task whose gradient the next `step` applies."""
        if weight <= 0 or not 0.0 < probability <= 1.0:
            raise ValueError(
                f"need weight > 0 and probability in (0, 1], got {weight}, {probability}"
            )
        self.task_weight = float(weight)
        self.task_probability = float(probability)

    def global_grad_norm(self) -> torch.Tensor:
        """L2 norm of all gradients this optimiser updates, over all ranks if partitioned."""
        params = [p for group in self.param_groups for p in group["params"]]
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            raise RuntimeError("TaskBalancedAdamW.step: no parameter has a gradient")
        # accumulate in fp32 whatever the gradient dtype: bf16 squares lose the small terms
        squared = torch.zeros((), dtype=torch.float32, device=grads[0].device)
        for g in grads:
            squared += g.detach().float().pow(2).sum()
        if self.partitioned and dist.is_available() and dist.is_initialized():
            dist.all_reduce(squared, op=dist.ReduceOp.SUM, group=self.process_group)
        return squared.sqrt()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        norm = self.global_grad_norm()
        self.last_grad_norm = float(norm)
        if not math.isfinite(self.last_grad_norm):
            raise FloatingPointError(f"non-finite gradient norm {self.last_grad_norm}")
        # a zero gradient (no loss tokens) stays zero instead of dividing by zero
        scale = self.task_weight / max(self.last_grad_norm, 1e-12)
        new_weight = 1.0 / self.task_probability
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = float(state["step"])
                g = p.grad.to(p.dtype) * scale
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(g, alpha=(1.0 - beta1) * new_weight)
                v.mul_(beta2).addcmul_(g, g, value=(1.0 - beta2) * new_weight)
                # decoupled weight decay (AdamW), applied before the adaptive step
                if wd:
                    p.mul_(1.0 - lr * wd)
                bias1 = 1.0 - beta1**t
                bias2 = 1.0 - beta2**t
                denom = (v / bias2).sqrt_().add_(eps)
                p.addcdiv_(m, denom, value=-lr / bias1)
        return loss


def parameter_groups(
    model: torch.nn.Module, weight_decay: float, no_decay_1d: bool = True
) -> list[dict]:
    """Two groups: matrices (decayed) and 1-D tensors such as biases and norms (not decayed)."""
    decay, no_decay = [], []
    for _, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        if not param.requires_grad:
            continue
        (no_decay if no_decay_1d and param.ndim < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: torch.nn.Module, cfg, partitioned: bool = False
) -> torch.optim.Optimizer:
    """The optimiser named by `cfg.optimizer` (a TrainConfig) over `model`'s parameters."""
    groups = parameter_groups(model, cfg.weight_decay, cfg.no_decay_1d)
    adam = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2), "eps": cfg.eps}
    adam["weight_decay"] = cfg.weight_decay
    if cfg.optimizer == "task_balanced_adamw":
        return TaskBalancedAdamW(groups, partitioned=partitioned, **adam)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, foreach=False, **adam)
    raise ValueError(f"train.optimizer must be adamw or task_balanced_adamw, got {cfg.optimizer!r}")


def lr_at(step: int, *, lr: float, total: int, warmup: int, min_ratio: float) -> float:
    """Learning rate of optimiser step `step` (0-based): linear warmup, then cosine decay."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


class WarmupCosine:
    """Sets every param group's lr to `lr_at(step)`; DeepSpeed calls `step()` after each update.

    Works on any object with `param_groups` (a torch optimiser or DeepSpeed's ZeRO
    wrapper around one). Its state is the step count, saved in checkpoints.
    """

    def __init__(self, optimizer, *, lr: float, total: int, warmup: int, min_ratio: float):
        self.optimizer = optimizer
        self.lr, self.total, self.warmup, self.min_ratio = lr, total, warmup, min_ratio
        self.last_step = 0
        self._apply()

    def current_lr(self) -> float:
        return lr_at(
            self.last_step,
            lr=self.lr,
            total=self.total,
            warmup=self.warmup,
            min_ratio=self.min_ratio,
        )

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.current_lr()

    def step(self, **_: object) -> None:
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        self.last_step = int(state["last_step"])
        self._apply()
