"""Two CPU ranks over gloo: same parameters on every rank, same losses as one rank.

Each case starts fresh processes (the launcher's environment set by hand, as
`deepspeed`/`torchrun` would) running tests/unicl/training_toy.py, and compares
2 ranks x 1 micro-batch of 2 against 1 rank x 2 micro-batches of 2 (global batch 4).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TOY = Path(__file__).with_name("training_toy.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(tmp: Path, world: int, zero: int, micro: int) -> list[dict]:
    out = tmp / f"w{world}-z{zero}"
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
        env.update(
            RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            DS_ACCELERATOR="cpu",
            OMP_NUM_THREADS="1",
        )
        cmd = [sys.executable, str(TOY), str(out), str(zero), str(micro), str(tmp / out.name)]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
    logs = [p.communicate(timeout=300)[0].decode(errors="replace") for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    return [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in range(world)]


@pytest.mark.slow
@pytest.mark.parametrize("zero", [0, 1])
def test_two_ranks_match_one_rank(tmp_path, zero):
    (single,) = launch(tmp_path, world=1, zero=zero, micro=2)
    ranks = launch(tmp_path, world=2, zero=zero, micro=2)
    params = [torch.tensor(r["params"]) for r in ranks]
    torch.testing.assert_close(params[0], params[1], rtol=0, atol=0)
    assert ranks[0]["tasks"] == ranks[1]["tasks"] == single["tasks"]
    assert ranks[0]["ce"] == ranks[1]["ce"]
    assert ranks[0]["ce"] == pytest.approx(single["ce"], rel=1e-5)
    torch.testing.assert_close(params[0], torch.tensor(single["params"]), rtol=1e-4, atol=1e-5)
