"""Toy model and task streams for the training tests (no unicl model or data needed).

Two tasks over a 16-token vocabulary: "copy" (predict the current token) and
"shift" (predict the current token + 1), with sequences of different lengths and
padding so that per-token loss normalisation matters. Example i of a stream is a
pure function of (task, i), like unicl's TaskStream. Also runnable as a script:
one rank of a multi-rank run (see test_training_multirank.py).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types

import torch

VOCAB = 16


@dataclasses.dataclass
class ToyBatch:
    input_ids: torch.Tensor  # (B, T)
    targets: torch.Tensor  # (B, T)
    loss_weights: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    task: str

    def to(self, device):
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)


class ToyStream:
    def __init__(self, task: str, size: int) -> None:
        self.task = task
        self.size = size

    def examples(self, start: int, count: int):
        out = []
        for i in range(start, start + count):
            g = torch.Generator().manual_seed(1000 * len(self.task) + i % self.size)
            length = int(torch.randint(3, 9, (1,), generator=g))
            ids = torch.randint(0, VOCAB, (length,), generator=g)
            target = ids if self.task == "copy" else (ids + 1) % VOCAB
            out.append((self.task, ids, target))
        return out


def streams():
    return {"copy": ToyStream("copy", 50), "shift": ToyStream("shift", 200)}


def collate(examples) -> ToyBatch:
    length = max(len(ids) for _, ids, _ in examples)
    batch = len(examples)
    input_ids = torch.zeros(batch, length, dtype=torch.long)
    targets = torch.zeros(batch, length, dtype=torch.long)
    weights = torch.zeros(batch, length)
    for row, (_, ids, target) in enumerate(examples):
        input_ids[row, : len(ids)] = ids
        targets[row, : len(ids)] = target
        weights[row, : len(ids)] = 1.0
    return ToyBatch(input_ids, targets, weights, weights > 0, examples[0][0])


class ToyModel(torch.nn.Module):
    def __init__(self, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, 32)
        self.drop = torch.nn.Dropout(dropout)
        self.norm = torch.nn.LayerNorm(32)
        self.head = torch.nn.Linear(32, VOCAB)

    def forward(self, input_ids):
        return self.head(self.norm(self.drop(self.embed(input_ids))))  # (B, T, V)


def loss_fn(model, batch):
    logits = model(batch.input_ids).float()  # (B, T, V)
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, VOCAB), batch.targets.reshape(-1), reduction="none"
    )
    w = batch.loss_weights.reshape(-1)
    ce = (ce * w).sum() / w.sum()
    aux = 0.01 * logits.pow(2).mean()
    return types.SimpleNamespace(loss=ce + aux, ce=ce, aux=aux.detach())


def make_trainer(
    run_dir, *, steps=6, batch_size=4, micro_batch=2, zero=0, seed=0, dropout=0.1, **train
):
    from unicl.training.config import TrainConfig
    from unicl.training.trainer import Trainer

    torch.manual_seed(seed)
    options = {"lr": 3e-2, "warmup_steps": 2, "log_every": 1, "tensorboard": False, "save_every": 0}
    options.update(train)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, micro_batch=micro_batch, **options)
    return Trainer(
        ToyModel(dropout),
        streams(),
        collate,
        loss_fn,
        cfg,
        {"zero_optimization": {"stage": zero}},
        run_dir,
        seed=seed,
        progress=False,
    )


def main(argv: list[str]) -> int:
    """One rank: train, then write losses and a parameter checksum to OUT.rank<r>.json."""
    out, zero, micro = argv[0], int(argv[1]), int(argv[2])
    # no dropout: ranks draw other dropout masks than one process would
    trainer = make_trainer(
        argv[3], steps=4, batch_size=4, micro_batch=micro, zero=zero, dropout=0.0
    )
    history = trainer.run()
    params = torch.cat([p.detach().float().reshape(-1) for p in trainer.engine.module.parameters()])
    with open(f"{out}.rank{trainer.rank}.json", "w") as f:
        json.dump(
            {
                "ce": [s.ce for s in history],
                "tasks": [s.task for s in history],
                "params": params.tolist(),
            },
            f,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
