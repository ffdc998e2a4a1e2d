"""Optimizer API contract for every registered name: determinism, exact resume after a
mid-run ``state_dict`` round trip, closures, routing to the AdamW fallback, LR schedules."""

from __future__ import annotations

import copy
import io
import logging

import pytest
import torch

from nestlearn.optim import OPTIMIZERS, NonlinearOutputMomentum, OptimConfig, build_optimizer
from tests.optim._common import TinyNet, make, train

METHODS = [n for n in OPTIMIZERS if n != "adamw"]
# Small f so the M3 slow memory is exercised (and crosses the save point) in 20 steps.
EXTRA = {"m3_slow_every": 3, "matrix_lr": 0.02, "dmgd_hidden": 4}


def _cfg(name: str) -> OptimConfig:
    return OptimConfig(name=name, lr=0.01, **({} if name == "adamw" else EXTRA))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_two_runs_are_identical(name: str) -> None:
    finals = []
    for _ in range(2):
        model = make(TinyNet)
        losses = train(model, build_optimizer(model, _cfg(name)), 15)
        finals.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*finals))
    assert losses[-1] == losses[-1]  # not NaN


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_dict_mid_run_resumes_exactly(name: str) -> None:
    model = make(TinyNet)
    opt = build_optimizer(model, _cfg(name))
    train(model, opt, 10)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    train(model, opt, 10, start=10)
    straight = [p.detach().clone() for p in model.parameters()]

    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    model2 = make(TinyNet, seed=123)  # different init: everything must come from the checkpoint
    model2.load_state_dict(saved["model"])
    opt2 = build_optimizer(model2, _cfg(name))
    opt2.load_state_dict(saved["opt"])
    train(model2, opt2, 10, start=10)
    resumed = [p.detach().clone() for p in model2.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed))


@pytest.mark.parametrize("name", ["m3", "delta-momentum", "deep-momentum", "delta-gd"])
def test_closure_matches_plain_step(name: str) -> None:
    runs = []
    for use_closure in (False, True):
        model = make(TinyNet)
        losses = train(model, build_optimizer(model, _cfg(name)), 5, use_closure=use_closure)
        runs.append((losses, [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


@pytest.mark.parametrize("name", METHODS)
def test_routing_hidden_matrices_to_method_rest_to_adamw(name: str) -> None:
    model = make(TinyNet)
    opt = build_optimizer(model, _cfg(name))
    names = {id(p): n for n, p in model.named_parameters()}
    method = {names[id(p)] for g in opt.param_groups if not g["use_fallback"] for p in g["params"]}
    fallback = {names[id(p)] for g in opt.param_groups if g["use_fallback"] for p in g["params"]}
    assert method == {"fc1.weight", "fc2.weight"}
    assert fallback == {"embed.weight", "head.weight", "fc1.bias", "fc2.bias", "gain"}
    lrs = {g["lr"] for g in opt.param_groups if not g["use_fallback"]}
    assert lrs == {0.02}
    decays = {names[id(p)]: g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decays["gain"] == 0.0 and decays["embed.weight"] == 0.1 and decays["fc1.weight"] == 0.1


def test_vectors_passed_directly_go_to_a_logged_fallback_group(caplog) -> None:
    model = make(TinyNet)
    with caplog.at_level(logging.INFO, logger="nestlearn.optim.base"):
        opt = NonlinearOutputMomentum([{"params": list(model.parameters()), "lr": 0.05}])
    assert "AdamW fallback" in caplog.text
    groups = opt.param_groups
    assert [g["use_fallback"] for g in groups] == [False, True]
    assert all(p.ndim >= 2 for p in groups[0]["params"])
    assert all(p.ndim < 2 for p in groups[1]["params"]) and groups[1]["lr"] == 0.05
    before = [p.detach().clone() for p in groups[1]["params"]]
    train(model, opt, 2)
    assert all(not torch.equal(a, p) for a, p in zip(before, groups[1]["params"]))


def test_lr_scheduler_scales_every_group_from_initial_lr() -> None:
    model = make(TinyNet)
    opt = build_optimizer(model, _cfg("m3"))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    assert sorted(g["lr"] for g in opt.param_groups) == sorted(
        0.5 * g["initial_lr"] for g in opt.param_groups
    )
    train(model, opt, 1)
    sched.step()


def test_vanishing_learning_rate_stops_every_group() -> None:
    """A schedule factor of ~0 must stop every group (the fallback too)."""
    model = make(TinyNet)
    opt = build_optimizer(model, _cfg("muon"))
    for g in opt.param_groups:
        g["lr"] = 1e-30
    before = copy.deepcopy(model.state_dict())
    train(model, opt, 2)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=1e-20)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"name": "m4"}, "optim.name"),
        ({"momentum": 1.0}, "optim.momentum"),
        ({"ns_steps": -1}, "optim.ns_steps"),
        ({"ns_dtype": "fp8"}, "optim.ns_dtype"),
        ({"m3_slow_every": 0}, "optim.m3_slow_every"),
        ({"beta3": 1.5}, "optim.beta3"),
        ({"precond": "shampoo"}, "optim.precond"),
        ({"dmgd_objective": "cos"}, "optim.dmgd_objective"),
        ({"matrix_lr": 0.0}, "optim.matrix_lr"),
        ({"muon_adjust_lr": "x"}, "optim.muon_adjust_lr"),
    ],
)
def test_config_validation_names_the_key(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        OptimConfig(**kw)


def test_adamw_default_is_unchanged() -> None:
    model = make(TinyNet)
    opt = build_optimizer(model, OptimConfig())
    assert type(opt) is torch.optim.AdamW
    assert opt.defaults["lr"] == 3e-3 and opt.defaults["betas"] == (0.9, 0.95)
