"""Trivial-memory settings reduce to torch's optimizers: float64, 100 steps, real loss.

Each test trains two identical models, one with a nestlearn optimizer in its reducing setting
and one with the torch optimizer, and asserts the final parameters agree to ~1e-12.
"""

from __future__ import annotations

import pytest
import torch

from nestlearn.optim import (
    M3,
    DeepMomentum,
    DeltaGD,
    DeltaMomentum,
    FeatureMapMomentum,
    NonlinearOutputMomentum,
    PreconditionedMomentum,
)
from tests.optim._common import MatNet, TinyNet, assert_close, make, run_pair, train

SGD_KW = {"lr": 0.05, "momentum": 0.9}


@pytest.mark.parametrize("nesterov", [False, True])
def test_preconditioned_identity_is_sgd_momentum(nesterov: bool) -> None:
    a, b = run_pair(
        lambda ps: PreconditionedMomentum(ps, **SGD_KW, preconditioner="identity", ema=False,
                                          nesterov=nesterov),
        lambda ps: torch.optim.SGD(ps, **SGD_KW, nesterov=nesterov),
    )  # fmt: skip
    assert_close(a, b)


def test_delta_momentum_without_decay_is_sgd_momentum() -> None:
    a, b = run_pair(
        lambda ps: DeltaMomentum(ps, **SGD_KW, decay=0.0),
        lambda ps: torch.optim.SGD(ps, **SGD_KW),
    )
    assert_close(a, b)


def test_delta_momentum_with_decay_differs_from_sgd() -> None:
    a, b = run_pair(
        lambda ps: DeltaMomentum(ps, **SGD_KW, decay=0.5),
        lambda ps: torch.optim.SGD(ps, **SGD_KW),
    )
    assert max((x - y).abs().max().item() for x, y in zip(a, b)) > 1e-3


@pytest.mark.parametrize("nesterov", [False, True])
def test_feature_map_identity_is_sgd_momentum(nesterov: bool) -> None:
    a, b = run_pair(
        lambda ps: FeatureMapMomentum(ps, **SGD_KW, feature_map="identity", nesterov=nesterov),
        lambda ps: torch.optim.SGD(ps, **SGD_KW, nesterov=nesterov),
    )
    assert_close(a, b)


def test_deep_momentum_linear_dot_is_sgd_momentum() -> None:
    a, b = run_pair(
        lambda ps: DeepMomentum(ps, **SGD_KW, hidden=0, objective="dot", inner_lr=1.0),
        lambda ps: torch.optim.SGD(ps, **SGD_KW),
    )
    assert_close(a, b)


def test_deep_momentum_linear_l2_is_ema_momentum() -> None:
    """l2 objective, retention 1, inner step 1 - beta: M <- lerp(M, g, 1 - beta)."""
    beta = 0.8
    a, b = run_pair(
        lambda ps: DeepMomentum(ps, lr=0.05, momentum=1.0, hidden=0, objective="l2",
                                inner_lr=1.0 - beta),
        lambda ps: NonlinearOutputMomentum(ps, lr=0.05, weight_decay=0.0, momentum=beta,
                                           nesterov=False, output="identity", ema=True),
    )  # fmt: skip
    assert_close(a, b)


@pytest.mark.parametrize(
    ("nesterov", "adjust", "foreach"),
    [(True, None, False), (False, "match_rms_adamw", False), (True, "original", True)],
)
def test_nonlinear_output_newton_schulz_is_torch_muon(nesterov: bool, adjust, foreach) -> None:
    """bf16 Newton–Schulz as torch does: bit-identical without foreach, ~1e-12 with it."""
    kw = {"lr": 0.02, "weight_decay": 0.1, "momentum": 0.9, "nesterov": nesterov,
          "adjust_lr_fn": adjust}  # fmt: skip
    a, b = run_pair(
        lambda ps: NonlinearOutputMomentum(ps, **kw, ns_dtype="bfloat16", foreach=foreach),
        lambda ps: torch.optim.Muon(ps, **kw),
    )
    if foreach:
        assert_close(a, b, rtol=1e-10, atol=1e-10)
    else:
        assert all(torch.equal(x, y) for x, y in zip(a, b))


ADAMW_KW = {"lr": 0.01, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.05}


def test_preconditioned_adam_on_momentum_is_adamw() -> None:
    a, b = run_pair(
        lambda ps: PreconditionedMomentum(ps, lr=0.01, momentum=0.9, preconditioner="adam",
                                          apply_to="momentum", ema=True, beta2=0.99, eps=1e-8,
                                          weight_decay=0.05),
        lambda ps: torch.optim.AdamW(ps, **ADAMW_KW),
    )  # fmt: skip
    assert_close(a, b)


def test_preconditioned_adam_on_grad_without_momentum_is_adamw_beta1_zero() -> None:
    a, b = run_pair(
        lambda ps: PreconditionedMomentum(ps, lr=0.01, momentum=0.0, preconditioner="adam",
                                          apply_to="grad", beta2=0.99, weight_decay=0.05),
        lambda ps: torch.optim.AdamW(ps, **{**ADAMW_KW, "betas": (0.0, 0.99)}),
    )  # fmt: skip
    assert_close(a, b)


def test_m3_without_orthogonalisation_or_slow_memory_is_adamw() -> None:
    a, b = run_pair(
        lambda ps: M3(ps, lr=0.01, betas=(0.9, 0.99, 0.9), alpha=0.0, slow_every=7, eps=1e-8,
                      weight_decay=0.05, ns_steps=0, adjust_lr_fn="none"),
        lambda ps: torch.optim.AdamW(ps, **ADAMW_KW),
    )  # fmt: skip
    assert_close(a, b)


def test_m3_without_preconditioning_or_slow_memory_is_torch_muon() -> None:
    kw = {"lr": 0.02, "weight_decay": 0.1}
    a, b = run_pair(
        lambda ps: M3(ps, **kw, betas=(0.9, 0.99, 0.9), alpha=0.0, slow_every=5,
                      precondition=False, ns_dtype="bfloat16", foreach=False),
        lambda ps: torch.optim.Muon(ps, **kw, momentum=0.9, nesterov=False),
    )  # fmt: skip
    assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_fallback_group_is_adamw() -> None:
    """Newton–Schulz cannot take vectors: they go to the fallback group, which is AdamW."""
    kw = {"lr": 0.01, "weight_decay": 0.05}
    mine = make(TinyNet)
    ref = make(TinyNet)
    vec = lambda m: [p for p in m.parameters() if p.ndim < 2]  # noqa: E731
    mat = lambda m: [p for p in m.parameters() if p.ndim >= 2]  # noqa: E731
    opt = NonlinearOutputMomentum(vec(mine), **kw, fallback_betas=(0.9, 0.99))
    assert [g["use_fallback"] for g in opt.param_groups] == [True]
    # Freeze the matrices so both runs see the same gradients for the vectors.
    for m in (mine, ref):
        for p in mat(m):
            p.requires_grad_(False)
    train(mine, opt, 100)
    train(ref, torch.optim.AdamW(vec(ref), **kw, betas=(0.9, 0.99)), 100)
    assert_close(vec(mine), vec(ref))


def test_delta_gd_without_decay_is_sgd() -> None:
    for decay, lr in [(0.0, 0.1)]:
        model_a, model_b = make(MatNet), make(MatNet)
        train(model_a, DeltaGD(model_a.parameters(), modules=model_a, lr=lr, decay=decay), 100)
        train(model_b, torch.optim.SGD(model_b.parameters(), lr=lr), 100)
        assert_close(list(model_a.parameters()), list(model_b.parameters()))
