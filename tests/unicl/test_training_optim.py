"""Task-balanced AdamW against hand-computed updates; the warmup + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch

from unicl.training.config import TrainConfig
from unicl.training.optim import (
    TaskBalancedAdamW,
    WarmupCosine,
    build_optimizer,
    lr_at,
    parameter_groups,
)


def step_with(opt, param, grad, weight, prob):
    param.grad = torch.tensor(grad, dtype=torch.float64)
    opt.set_task(weight, prob)
    opt.step()


def test_two_steps_match_the_formula_by_hand():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    opt = TaskBalancedAdamW([p], lr=0.1, betas=(0.9, 0.99), eps=1e-12, weight_decay=0.0)
    # step 1: grad (3, 4), ||grad|| = 5, w = 2, s = 0.25 -> g = (1.2, 1.6)
    # m = 0.1 * g / 0.25 = (0.48, 0.64); v = 0.01 * g^2 / 0.25 = (0.0576, 0.1024)
    # m_hat = m / 0.1 = (4.8, 6.4); sqrt(v_hat) = sqrt(v / 0.01) = (2.4, 3.2)
    # p -= 0.1 * (2, 2)
    step_with(opt, p, [3.0, 4.0], weight=2.0, prob=0.25)
    assert p.tolist() == pytest.approx([0.8, 1.8], abs=1e-9)
    assert opt.last_grad_norm == pytest.approx(5.0)
    # step 2: grad (0, -2), ||grad|| = 2, w = 1, s = 0.75 -> g = (0, -1)
    step_with(opt, p, [0.0, -2.0], weight=1.0, prob=0.75)
    m = [0.9 * 0.48, 0.9 * 0.64 + 0.1 * -1.0 / 0.75]
    v = [0.99 * 0.0576, 0.99 * 0.1024 + 0.01 * 1.0 / 0.75]
    bias1, bias2 = 1 - 0.9**2, 1 - 0.99**2
    expected = [
        x - 0.1 * (mi / bias1) / (math.sqrt(vi / bias2) + 1e-12)
        for x, mi, vi in zip([0.8, 1.8], m, v)
    ]
    assert p.tolist() == pytest.approx(expected, abs=1e-9)


def test_weight_decay_is_decoupled():
    p = torch.nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    opt = TaskBalancedAdamW([p], lr=0.1, betas=(0.9, 0.99), eps=1e-12, weight_decay=0.5)
    step_with(opt, p, [-7.0], weight=1.0, prob=1.0)
    # decay: 2 * (1 - 0.1 * 0.5) = 1.9; adaptive step: +0.1 * 1 (normalised, s = 1)
    assert p.item() == pytest.approx(2.0)


def test_norm_is_global_over_params_and_groups():
    a = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    b = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = TaskBalancedAdamW(
        [{"params": [a]}, {"params": [b], "weight_decay": 0.0}], lr=1.0, eps=1e-12
    )
    a.grad = torch.tensor([6.0], dtype=torch.float64)
    b.grad = torch.tensor([8.0], dtype=torch.float64)
    opt.step()
    assert opt.last_grad_norm == pytest.approx(10.0)
    # first step of Adam moves each coordinate by lr * sign(g) / sqrt(s)
    assert (a.item(), b.item()) == pytest.approx((-1.0, -1.0))
    assert opt.state[a]["exp_avg"].item() == pytest.approx(0.1 * 0.6)
    assert opt.state[b]["exp_avg"].item() == pytest.approx(0.1 * 0.8)


def test_equals_adamw_on_unit_norm_gradients_when_s_is_one():
    torch.manual_seed(0)
    model_a = torch.nn.Linear(5, 3)
    model_b = torch.nn.Linear(5, 3)
    model_b.load_state_dict(model_a.state_dict())
    ours = TaskBalancedAdamW(model_a.parameters(), lr=1e-2, weight_decay=0.1)
    ref = torch.optim.AdamW(model_b.parameters(), lr=1e-2, weight_decay=0.1)
    for i in range(5):
        x = torch.randn(8, 5)
        for model in (model_a, model_b):
            model.zero_grad()
            (model(x) ** 2).mean().mul(10.0 ** (i - 2)).backward()
        # the reference sees the normalised gradient the formula prescribes
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model_b.parameters()))
        for p in model_b.parameters():
            p.grad /= norm
        ours.step()
        ref.step()
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_scale_of_the_loss_does_not_matter():
    updates = []
    for scale in (1e-3, 1.0, 1e3):
        p = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))
        opt = TaskBalancedAdamW([p], lr=0.01)
        for grad in ([1.0, 2.0, -3.0], [0.5, 0.0, 1.0]):
            step_with(opt, p, [scale * g for g in grad], weight=1.0, prob=0.5)
        updates.append(p.detach().clone())
    torch.testing.assert_close(updates[0], updates[1])
    torch.testing.assert_close(updates[2], updates[1])


def test_non_finite_gradient_is_refused_and_bad_task_settings_rejected():
    p = torch.nn.Parameter(torch.ones(2))
    opt = TaskBalancedAdamW([p])
    p.grad = torch.tensor([float("nan"), 1.0])
    with pytest.raises(FloatingPointError, match="non-finite"):
        opt.step()
    assert p.tolist() == [1.0, 1.0]
    with pytest.raises(ValueError):
        opt.set_task(1.0, 0.0)


def test_state_dict_round_trip_continues_identically():
    def run(split: bool):
        torch.manual_seed(1)
        model = torch.nn.Linear(4, 2)
        opt = TaskBalancedAdamW(model.parameters(), lr=1e-2)
        data = [torch.randn(3, 4) for _ in range(6)]
        for i, x in enumerate(data):
            if split and i == 3:
                state = {k: v.clone() for k, v in model.state_dict().items()}
                opt_state = opt.state_dict()
                model = torch.nn.Linear(4, 2)
                model.load_state_dict(state)
                opt = TaskBalancedAdamW(model.parameters(), lr=1e-2)
                opt.load_state_dict(opt_state)
            model.zero_grad()
            model(x).pow(2).mean().backward()
            opt.set_task(1.0, 0.5 if i % 2 else 1.0)
            opt.step()
        return [p.detach() for p in model.parameters()]

    for a, b in zip(run(False), run(True)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_parameter_groups_and_builder():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    groups = parameter_groups(model, 0.05)
    assert [len(g["params"]) for g in groups] == [1, 3]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert isinstance(build_optimizer(model, TrainConfig()), TaskBalancedAdamW)
    assert type(build_optimizer(model, TrainConfig(optimizer="adamw"))) is torch.optim.AdamW


def test_warmup_then_cosine():
    kw = {"lr": 1.0, "total": 110, "warmup": 10, "min_ratio": 0.1}
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.55)
    assert lr_at(110, **kw) == pytest.approx(0.1)
    assert lr_at(500, **kw) == pytest.approx(0.1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=123.0)
    sched = WarmupCosine(opt, **kw)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    for _ in range(60):
        sched.step()
    assert sched.get_last_lr() == [pytest.approx(0.55)]
    other = WarmupCosine(opt, **kw)
    other.load_state_dict(sched.state_dict())
    assert opt.param_groups[0]["lr"] == pytest.approx(0.55)
