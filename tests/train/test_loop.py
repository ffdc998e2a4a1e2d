"""The shared training step and loop (``nestlearn.train.loop``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nestlearn.train.loop import (
    clip_gradients,
    finish_step,
    fit_steps,
    prepare_optimizer,
    set_lr_factor,
)


def _raise(step: int, loss: float, gnorm: float):
    raise FloatingPointError(f"step {step} loss {loss} gnorm {gnorm}")


def test_schedule_scales_each_groups_own_peak_rate():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    opt = torch.optim.SGD(
        [{"params": a.parameters(), "lr": 1.0}, {"params": b.parameters(), "lr": 0.1}]
    )
    prepare_optimizer(nn.ModuleList([a, b]), opt)
    set_lr_factor(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.05]
    assert [g["initial_lr"] for g in opt.param_groups] == [1.0, 0.1]


def test_clip_gradients_returns_the_norm_before_clipping():
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    assert clip_gradients([p], 0.0) == pytest.approx(5.0)  # measured only
    assert torch.equal(p.grad, torch.tensor([3.0, 4.0]))
    assert clip_gradients([p], 1.0) == pytest.approx(5.0)
    assert float(p.grad.norm()) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("bad", ["loss", "grad"])
def test_a_non_finite_step_is_refused_before_the_update(bad):
    p = nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=1.0)
    p.grad = torch.tensor([float("inf") if bad == "grad" else 1.0, 1.0])
    loss = float("nan") if bad == "loss" else 1.0
    with pytest.raises(FloatingPointError, match="step 7"):
        finish_step(opt, [p], step=7, loss=loss, grad_clip=1.0, on_diverged=_raise)
    assert torch.equal(p.detach(), torch.ones(2)) and p.grad is None


def test_fit_steps_follows_the_schedule_and_stops_early():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = prepare_optimizer(model, torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    lrs: list[float] = []

    def loss_fn(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        lrs.append(opt.param_groups[0]["lr"])
        return (model(xb) - yb).pow(2).mean()

    scores = iter([3.0, 2.0, 1.0])
    losses, history = fit_steps(
        model, opt, iter([(x, y)] * 10), loss_fn, steps=10, start=4,
        lr_factor=lambda s: 1.0 / (s + 1), grad_clip=0.0, on_diverged=_raise,
        evaluate=lambda: next(scores), eval_every=2, stop=lambda s: s < 2.5,
    )  # fmt: skip
    assert lrs == pytest.approx([0.1 / 5, 0.1 / 6, 0.1 / 7, 0.1 / 8])  # steps 4.. of the schedule
    assert history == [(2, 3.0), (4, 2.0)] and len(losses) == 4
    assert losses[-1] < losses[0]
