"""Training hyper-parameters: the `train:` section of a unicl config.

The optimiser and schedule follow the paper's multi-task training strategy
(arXiv 2312.02520): AdamW with task-balanced gradient normalisation, lr 1e-4,
weight decay 0.05, gradient clipping 0.5, one task per global batch sampled with
probability proportional to sqrt(dataset size). The schedule is not stated by
the paper; we use linear warmup then cosine decay (our choice, documented in
docs/training.md).

Batch sizes: `batch_size` is the GLOBAL number of sequences per optimiser step;
`micro_batch` is what one rank runs through forward/backward at once. DeepSpeed's
gradient accumulation makes up the difference:
batch_size = micro_batch * gradient_accumulation_steps * world_size.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

Optimizer = Literal["adamw", "task_balanced_adamw"]
Sampling = Literal["sqrt", "proportional", "uniform"]
Precision = Literal["auto", "bf16", "fp32"]
Resume = Literal["auto", "never", "require"]
CpuMalloc = Literal["retain", "default"]


@dataclasses.dataclass
class TrainConfig:
    """Optimisation, schedule, batching, checkpointing and logging of a training run."""

    #: optimiser steps (each step: one task, one global batch)
    steps: int = 1000
    #: sequences per optimiser step over all ranks (the paper: 512)
    batch_size: int = 16
    #: sequences per forward/backward on one rank
    micro_batch: int = 4
    #: peak learning rate (after warmup)
    lr: float = 1e-4
    #: linear warmup from 0 to `lr` over this many steps
    warmup_steps: int = 100
    #: cosine decay ends at lr * min_lr_ratio at the last step
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.05
    #: biases, LayerNorm gains and other 1-D parameters get no weight decay
    no_decay_1d: bool = True
    #: Adam's usual betas (weights of the OLD moments)
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    #: global L2 gradient-norm clip (DeepSpeed `gradient_clipping`); 0 disables
    grad_clip: float = 0.5
    #: tokenizer names whose target tokens are scored by a softmax over that tokenizer's ids only
    #: (the set constrained decoding chooses from); [] = the full vocabulary (the paper)
    closed_loss_spans: list[str] = dataclasses.field(default_factory=list)
    #: "task_balanced_adamw" (the paper) or plain "adamw" (ablation)
    optimizer: Optimizer = "task_balanced_adamw"
    #: task probability: "sqrt" (of dataset size, the paper), "proportional", "uniform"
    task_sampling: Sampling = "sqrt"
    #: per-task gradient weight w_k of the task-balanced optimiser (missing tasks: 1.0)
    task_weights: dict[str, float] = dataclasses.field(default_factory=dict)
    #: "auto": bf16 on CUDA, fp32 on CPU
    precision: Precision = "auto"
    #: where checkpoints, logs and curves go; null -> runs/<config name>
    run_dir: str | None = None
    #: "auto": continue from the run dir's latest checkpoint if there is one;
    #: "never": refuse to start in a run dir that has checkpoints; "require": fail without one
    resume: Resume = "auto"
    #: start from these weights instead of a random initialisation (fine-tuning): an exported
    #: model folder, a run directory (its latest checkpoint) or `builtin:<name>`. Its model,
    #: vocabulary and tokenizers must be this config's; tasks, data and the schedule may
    #: differ, and the optimiser starts afresh. A run that resumes from its own checkpoint
    #: ignores it. null = random weights.
    init_from: str | None = None
    #: checkpoint every this many steps (and at the end); 0 = only at the end
    save_every: int = 500
    #: how many step checkpoints to keep (oldest removed first); 0 keeps all
    keep_checkpoints: int = 2
    #: write a JSONL/TensorBoard record every this many steps
    log_every: int = 10
    #: redraw the loss-curve PNG every this many steps (and at the end)
    plot_every: int = 200
    #: write TensorBoard event files next to the JSONL log
    tensorboard: bool = True
    #: CPU training on glibc (Linux): "retain" keeps freed memory in the process (no mmap, no
    #: trim), so every step's large activations reuse resident pages instead of faulting in
    #: fresh ones (25-35 % faster tiny-config steps, docs/BENCHMARKS.md); the process keeps its
    #: peak memory. "default" leaves malloc alone. Ignored on GPUs and elsewhere.
    cpu_malloc: CpuMalloc = "retain"

    def __post_init__(self) -> None:
        positive = {"steps": self.steps, "batch_size": self.batch_size}
        positive.update(micro_batch=self.micro_batch, log_every=self.log_every)
        positive.update(plot_every=self.plot_every)
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"train.{name} must be >= 1, got {value}")
        non_negative = {"warmup_steps": self.warmup_steps, "save_every": self.save_every}
        non_negative.update(keep_checkpoints=self.keep_checkpoints, grad_clip=self.grad_clip)
        non_negative.update(weight_decay=self.weight_decay)
        for name, value in non_negative.items():
            if value < 0:
                raise ValueError(f"train.{name} must be >= 0, got {value}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"train.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        for name, beta in (("beta1", self.beta1), ("beta2", self.beta2)):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"train.{name} must lie in [0, 1), got {beta}")
        if self.eps <= 0:
            raise ValueError(f"train.eps must be > 0, got {self.eps}")
        if self.batch_size % self.micro_batch:
            raise ValueError(
                f"train.batch_size ({self.batch_size}) must be a multiple of train.micro_batch "
                f"({self.micro_batch})"
            )
        bad = {k: w for k, w in self.task_weights.items() if w <= 0}
        if bad:
            raise ValueError(f"train.task_weights must be > 0, got {bad}")

    def accumulation_steps(self, world_size: int) -> int:
        """Micro-batches per rank per optimiser step; errors if the batch does not split."""
        per_step = self.micro_batch * world_size
        if self.batch_size % per_step:
            raise ValueError(
                f"train.batch_size ({self.batch_size}) is not divisible by train.micro_batch "
                f"({self.micro_batch}) x {world_size} ranks = {per_step}; change batch_size, "
                f"micro_batch or the number of ranks"
            )
        return self.batch_size // per_step
