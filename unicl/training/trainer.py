"""The training loop: one task per step, DeepSpeed updates, checkpoints, logs, NaN guard.

One optimiser step (arXiv 2312.02520, multi-task training strategy):

    task k = sampler.task_at(step)                 same on every rank, no communication
    for each of this rank's micro-batches (all of task k):
        forward -> CE on output tokens + lambda * aux  -> engine.backward
    all-reduce the step's statistics; stop on a non-finite loss BEFORE the update
    optimiser.set_task(w_k, s_k); engine.step()    (clip, task-balanced AdamW, lr schedule)

Loss normalisation: each micro-batch's CE is a mean over its own output tokens,
but caption lengths vary, so plain averaging over micro-batches and ranks would
weigh tokens unequally. The CE term is rescaled by (tokens in this micro-batch x
micro-batches x ranks / tokens in the global batch), which makes the update the
gradient of the token-mean CE over the whole global batch: the same for 1 rank or
N ranks, 1 micro-batch or many. The auxiliary load-balancing term is averaged.

`Trainer` knows nothing of unicl's model or data: it takes a model, task streams,
a collate function and a loss function, which keeps it testable with toy parts.
`unicl/training/run.py` builds the real ones from a config.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from unicl.ownership import claim
from unicl.training import engine as ds_engine
from unicl.training.checkpoint import CheckpointManager, check_compatible, step_of
from unicl.training.config import TrainConfig
from unicl.training.logs import RunLogger
from unicl.training.optim import TaskBalancedAdamW
from unicl.training.sampler import TaskSampler

#: file in the run directory that marks it as a run and says how far it got
RUN_FILE = "run.json"
#: the run's full config, as trained
CONFIG_FILE = "config.yaml"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stopped before applying that update."""


@dataclasses.dataclass
class StepStats:
    """Statistics of one optimiser step, reduced over micro-batches and ranks."""

    step: int
    task: str
    loss: float
    ce: float
    aux: float
    tokens: float  # loss-carrying tokens in the global batch
    seq_tokens: float  # all non-padding tokens in the global batch (throughput)
    expert_load: list[list[float]] | None = None


def loss_token_count(batch: Any) -> torch.Tensor:
    """How many (weighted) tokens carry loss in `batch` (sum of its loss weights)."""
    return batch.loss_weights.detach().float().sum()


def sequence_token_count(batch: Any) -> torch.Tensor:
    return batch.attention_mask.detach().float().sum()


class Trainer:
    """Runs `train.steps` optimiser steps of `model` on `streams`, resuming if asked.

    Args:
        model: the module to train (built with the run's seed already applied).
        streams: task name -> stream with `.size` and `.examples(start, count)`.
        collate: list of stream examples -> a batch with `.to(device)`,
            `.loss_weights` and `.attention_mask` (B, T).
        loss_fn: (model, batch) -> object with `loss` (what to minimise: CE plus
            the weighted auxiliary term), `ce` (token-mean CE) and optionally `aux`
            and `expert_load` (per MoE layer, per expert token shares).
        train: the TrainConfig; `deepspeed` the user's DeepSpeed dict.
        config: the full run config as a plain dict (saved with checkpoints and
            compared on resume).
        token_count: batch -> the CE's denominator for that batch (its loss-carrying
            tokens), used to weigh micro-batches and ranks exactly.
        complete: a saved config -> the same with the defaults of keys it lacks (written
            before an option existed), before it is compared on resume; None: as saved.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        streams: Mapping[str, Any],
        collate: Callable[[list[Any]], Any],
        loss_fn: Callable[[Any, Any], Any],
        train: TrainConfig,
        deepspeed: Mapping[str, Any],
        run_dir: str | Path,
        seed: int = 0,
        config: Mapping[str, Any] | None = None,
        progress: bool = True,
        token_count: Callable[[Any], torch.Tensor] = loss_token_count,
        complete: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
    ) -> None:
        self.model = model
        self.token_count = token_count
        self.streams = dict(streams)
        self.collate = collate
        self.loss_fn = loss_fn
        self.train = train
        self.user_ds = dict(deepspeed)
        self.run_dir = Path(run_dir)
        self.seed = seed
        self.config = dict(config or {"seed": seed, "train": dataclasses.asdict(train)})
        self.progress = progress
        self.complete = complete
        self.history: list[StepStats] = []

    # ---- setup ------------------------------------------------------------- #

    def setup(self) -> None:
        """Distributed init, batch checks, resume checks, the engine; no training yet."""
        self.rank, self.world = ds_engine.init_distributed()
        self.ds_config = ds_engine.deepspeed_config(self.user_ds, self.train, self.world)
        self.gas = self.ds_config["gradient_accumulation_steps"]
        self.sampler = TaskSampler(
            self.streams,
            global_batch=self.train.batch_size,
            seed=self.seed,
            mode=self.train.task_sampling,
            rank=self.rank,
            world_size=self.world,
            micro_batch=self.train.micro_batch,
        )
        unknown = sorted(set(self.train.task_weights) - set(self.sampler.tasks))
        if unknown:
            raise ValueError(
                f"train.task_weights names tasks that are not trained: {unknown}; "
                f"tasks: {self.sampler.tasks}"
            )
        self.checkpoints = CheckpointManager(
            self.run_dir / "checkpoints", keep=self.train.keep_checkpoints, rank=self.rank
        )
        tag = self.checkpoints.latest()
        if tag is not None and self.train.resume == "never":
            raise ValueError(
                f"{self.run_dir} already holds checkpoint {tag!r} and train.resume=never; "
                "choose another train.run_dir or set train.resume=auto"
            )
        if tag is None and self.train.resume == "require":
            raise FileNotFoundError(
                f"train.resume=require but {self.checkpoints.directory} has no checkpoint"
            )
        if tag is not None:
            saved = self.checkpoints.saved_config(tag)
            check_compatible(self.complete(saved) if self.complete else saved, self.config)
            done = step_of(tag)
            if done > self.train.steps:
                raise ValueError(
                    f"{self.run_dir} holds checkpoint {tag!r} ({done} steps), past "
                    f"train.steps={self.train.steps}; raise train.steps to continue it, or "
                    "choose another train.run_dir"
                )
        if self.rank == 0:
            claim(self.run_dir, "run", "train.run_dir")
        self.device = ds_engine.device()
        self.engine, self.optimizer, self.scheduler = ds_engine.build_engine(
            self.model, self.train, self.ds_config
        )
        self.start_step = 0
        if tag is not None:
            state = self.checkpoints.load(self.engine, tag)
            self.sampler.load_state_dict(state["sampler"])
            self.start_step = int(state["step"])
        self.logger = RunLogger(
            self.run_dir,
            enabled=self.rank == 0,
            tensorboard=self.train.tensorboard,
            start_step=self.start_step,
        )
        if tag is not None:
            self.logger.event("resumed", step=self.start_step, checkpoint=tag)
        if self.rank == 0:
            (self.run_dir / CONFIG_FILE).write_text(yaml.safe_dump(self.config, sort_keys=False))
        self._mark("running", self.start_step)

    def _mark(self, status: str, step: int, **extra: Any) -> None:
        """Record the run's status in run.json (what `unicl export` and `unicl.load` look for)."""
        if self.rank == 0:
            info = {"status": status, "step": step, "steps": self.train.steps, **extra}
            (self.run_dir / RUN_FILE).write_text(json.dumps(info, indent=2) + "\n")

    # ---- one step ---------------------------------------------------------- #

    def _reduce(self, values: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if self.world > 1:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def train_step(self, step: int) -> StepStats:
        plan = self.sampler.next(step)
        batches = [self.collate(m).to(self.device) for m in plan.micro_batches]
        counts = torch.stack([self.token_count(b).float() for b in batches]).to(self.device)
        total = self._reduce(counts.sum().clone())
        # ce_sum, aux_sum, loss_sum, sequence tokens (reduced over ranks below)
        acc = torch.zeros(4, dtype=torch.float64, device=self.device)
        load_sum = None
        for i, batch in enumerate(batches):
            out = self.loss_fn(self.engine, batch)
            ce = out.ce.float()
            ce_value = float(ce.detach())
            extra = out.loss.float() - ce  # lambda * aux (zero for dense models)
            # makes the update the gradient of the global token-mean CE (module docstring)
            scale = counts[i] * self.gas * self.world / total.clamp_min(1.0)
            self.engine.backward(ce * scale + extra)
            aux = getattr(out, "aux", None)
            aux_value = float(aux) if aux is not None else 0.0
            acc += torch.tensor(
                [
                    ce_value * float(counts[i]),
                    aux_value,
                    float(out.loss.detach()),
                    float(sequence_token_count(batch)),
                ],
                dtype=torch.float64,
                device=self.device,
            )
            load = getattr(out, "expert_load", None)
            if load is not None:
                load = torch.as_tensor(load, dtype=torch.float64, device=self.device).detach()
                load_sum = load if load_sum is None else load_sum + load
            if i < len(batches) - 1:
                self.engine.step()  # DeepSpeed counts micro-steps; no update yet
        acc = self._reduce(acc)
        micro_total = self.gas * self.world
        if load_sum is not None:
            load_sum = self._reduce(load_sum) / micro_total
        ce_mean = float(acc[0] / total.clamp_min(1.0))
        stats = StepStats(
            step=step,
            task=plan.task,
            loss=float(acc[2]) / micro_total,
            ce=ce_mean,
            aux=float(acc[1]) / micro_total,
            tokens=float(total),
            seq_tokens=float(acc[3]),
            expert_load=None if load_sum is None else load_sum.tolist(),
        )
        if not (math.isfinite(stats.loss) and math.isfinite(stats.ce)):
            raise TrainingDiverged(
                f"non-finite loss {stats.loss} (CE {stats.ce}) at step {step} on task "
                f"{plan.task!r}; the update was not applied. Last good checkpoint: "
                f"{self.checkpoints.latest() or 'none'} in {self.checkpoints.directory}. "
                "Lower train.lr, raise train.warmup_steps or check the data."
            )
        if isinstance(self.optimizer, TaskBalancedAdamW):
            weight = self.train.task_weights.get(plan.task, 1.0)
            self.optimizer.set_task(weight, self.sampler.probabilities[plan.task])
        try:
            self.engine.step()
        except FloatingPointError as err:
            raise TrainingDiverged(
                f"{err} at step {step} on task {plan.task!r}; the update was not applied"
            ) from err
        return stats

    # ---- the loop ------------------------------------------------------------ #

    def save(self, step: int) -> str:
        """Checkpoint step `step`, after checking that every weight is finite (a checkpoint
        is only ever the last good one)."""
        bad = [n for n, p in self.engine.module.named_parameters() if not p.isfinite().all()]
        if bad:
            raise TrainingDiverged(
                f"weights {bad[:3]} hold NaN or infinite values after step {step}; not saved. "
                f"Last good checkpoint: {self.checkpoints.latest() or 'none'} in "
                f"{self.checkpoints.directory}. Lower train.lr or check the data."
            )
        state = {"step": step, "sampler": self.sampler.state_dict()}
        return self.checkpoints.save(self.engine, step, state, self.config)

    def _save_or_stop(self, step: int) -> None:
        try:
            self.save(step)
        except TrainingDiverged as err:
            self.logger.event("diverged", step=step, detail=str(err))
            self._mark("diverged", step, detail=str(err))
            raise

    def grad_norm(self) -> float:
        """The last step's global gradient norm: DeepSpeed's (before clipping) when the engine
        reports one, else the norm the task-balanced optimiser saw (after DeepSpeed's clipping)."""
        norm = self.engine.get_global_grad_norm()
        if norm is None:
            norm = getattr(self.optimizer, "last_grad_norm", None)
        return float(norm) if norm is not None else float("nan")

    def run(self) -> list[StepStats]:
        """Train to `train.steps` (from the resumed step); returns this session's stats."""
        if not hasattr(self, "engine"):
            self.setup()
        steps = self.train.steps
        bar = tqdm(
            total=steps,
            initial=self.start_step,
            desc="train",
            unit="step",
            disable=not self.progress or self.rank != 0,
            dynamic_ncols=True,
        )
        started = time.perf_counter()
        window_tokens, window_start = 0.0, time.perf_counter()
        try:
            for step in range(self.start_step, steps):
                lr = self.scheduler.current_lr()
                try:
                    stats = self.train_step(step)
                except TrainingDiverged as err:
                    self.logger.event("diverged", step=step, detail=str(err))
                    self._mark("diverged", step, detail=str(err))
                    raise
                self.history.append(stats)
                window_tokens += stats.seq_tokens
                done = step + 1
                if done % self.train.log_every == 0 or done == steps:
                    now = time.perf_counter()
                    tps = window_tokens / max(now - window_start, 1e-9)
                    window_tokens, window_start = 0.0, now
                    self.logger.log(
                        {
                            **dataclasses.asdict(stats),
                            "lr": lr,
                            "grad_norm": self.grad_norm(),
                            "tokens_per_s": tps,
                            "elapsed_s": now - started,
                        }
                    )
                    bar.set_postfix(task=stats.task[:4], ce=f"{stats.ce:.3f}", tok_s=f"{tps:.0f}")
                bar.update(1)
                if done % max(1, self.train.plot_every) == 0:
                    self.logger.plot()
                if self.train.save_every and done % self.train.save_every == 0 and done < steps:
                    self._save_or_stop(done)
            if self.start_step < steps or self.checkpoints.latest() is None:
                self._save_or_stop(steps)
            self._mark("finished", steps)
        finally:
            bar.close()
            self.logger.plot()
            self.logger.close()
        return self.history
