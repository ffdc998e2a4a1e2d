"""Multi-scale Momentum Muon (M3): Algorithm 1 and eq. 75 of arXiv 2512.24695 (§7.2).

M3 = Adam's second moment + Muon's orthogonalised momentum + a Continuum Memory System of two
momenta: a fast one M1 updated every step and a slow one M2 updated once every ``slow_every``
(f) steps with the gradients of the last f steps. Two variants:

``literal`` (Algorithm 1 as printed):
    M1 <- M1 + b1 g;  V <- V + b2 g^2;  O1 = NS(M1)
    W  <- W - lr (O1 + alpha O2) / (sqrt(V) + eps)
    every f steps (after the step): M2 <- M2 + b3 sum(last f gradients);  O2 = NS(M2)
  M1, V and M2 are running *sums* (no 1-b factors, no bias correction). The update divides a
  dense orthogonalised matrix (entries ~ 1/sqrt(C) whatever g is) element-wise by sqrt(V),
  which is ~|g_ij| sqrt(b2 t): wherever a gradient entry is small the step is huge (up to
  lr / eps), and its units are 1/gradient. It diverges on real networks at ordinary learning
  rates; it is here to be faithful and to show that.

``stabilised`` (ours; the normalisation the paper omits):
    M1 <- b1 M1 + (1-b1) g;  V <- b2 V + (1-b2) g^2   (EMAs, bias-corrected: ^)
    D  = sqrt(V^) + eps
    O1 = NS(M1^ / D)                                   (whiten like Adam, then orthogonalise)
    W  <- W (1 - lr wd) - lr s (O1 + alpha O2)         (s: Muon's shape factor)
    every f steps: M2 <- b3 M2 + (1-b3) mean(last f gradients);  O2 = NS(M2^ / D)
  Whitening before Newton–Schulz keeps the Adam ratio M/sqrt(V) element-wise bounded and the
  orthogonalised output has spectral norm ~1, so the step is bounded and unit-free like Muon's.
  ``precondition=False`` drops D (and the then-irrelevant bias corrections).

Reductions (tested): stabilised with ``ns_steps=0, alpha=0, adjust_lr_fn="none"`` is AdamW
(betas (b1, b2)); stabilised with ``precondition=False, alpha=0`` is ``torch.optim.Muon`` with
``nesterov=False``. O2 is cached between slow updates, so M3 costs one Newton–Schulz per step
like Muon (plus one per f steps).

Sum indices: eq. 75 / Algorithm 1 sum g_i for i = (k-1)f .. kf, f+1 terms; we use the f
gradients of the previous block (paper_digest §9 item 3). O2 is zero during the first block.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from nestlearn.optim.base import NestedOptimizer, store
from nestlearn.optim.momentum import output_map
from nestlearn.optim.newton_schulz import (
    ADJUST_LR_FNS,
    NS_COEFFICIENTS,
    NS_EPS,
    muon_lrs,
)

VARIANTS = ("stabilised", "literal")


class M3State(NamedTuple):
    """Per-tensor M3 memory (lists aligned with the parameters)."""

    m1: list[Tensor]
    """Fast momentum M1."""
    v: list[Tensor]
    """Second moment V."""
    m2: list[Tensor]
    """Slow momentum M2."""
    slow: list[Tensor]
    """Sum of the gradients since the last slow update."""
    o2: list[Tensor]
    """Cached orthogonalised slow momentum O2 (already preconditioned in ``stabilised``)."""


def m3_update(
    grads: Sequence[Tensor],
    state: M3State,
    step: int,
    n_slow: int,
    *,
    betas: tuple[float, float, float],
    alpha: float,
    slow_every: int,
    eps: float,
    variant: str = "stabilised",
    precondition: bool = True,
    ns_steps: int = 5,
    ns_coefficients: Sequence[float] = NS_COEFFICIENTS,
    ns_eps: float = NS_EPS,
    ns_dtype: str | torch.dtype | None = None,
    batched: bool = True,
) -> tuple[list[Tensor], M3State, int]:
    """One M3 step for tensors that share the step count ``step`` (t >= 1, this step) and the
    number ``n_slow`` of slow updates done so far. Pure: returns ``(directions, new_state,
    new_n_slow)``; the caller applies W <- W (1 - lr wd) - lr s d. See the module docstring."""
    b1, b2, b3 = betas
    grads = list(grads)
    ns = {"ns_steps": ns_steps, "ns_coefficients": ns_coefficients, "ns_eps": ns_eps,
          "ns_dtype": ns_dtype, "batched": batched}  # fmt: skip
    if variant == "literal":
        m1 = torch._foreach_add(state.m1, grads, alpha=b1)
        v = torch._foreach_addcmul(state.v, grads, grads, value=b2)
        o1 = output_map(m1, "newton-schulz", **ns)
        num = torch._foreach_add(o1, state.o2, alpha=alpha)
        den = torch._foreach_add(torch._foreach_sqrt(v), eps)
        d = list(torch._foreach_div(num, den))
    else:
        m1 = torch._foreach_lerp(state.m1, grads, 1.0 - b1)
        v = torch._foreach_mul(state.v, b2)
        torch._foreach_addcmul_(v, grads, grads, value=1.0 - b2)
        if precondition:
            # M^/(sqrt(V^) + eps) = M (sqrt(bc2)/bc1) / (sqrt(V) + eps sqrt(bc2)); the scalar
            # factor is dropped before Newton-Schulz (which normalises), saving a full pass.
            sqrt_bc2 = (1.0 - b2**step) ** 0.5
            den = torch._foreach_sqrt(v)
            torch._foreach_add_(den, eps * sqrt_bc2)
            x1 = torch._foreach_div(m1, den)
            if ns_steps == 0:
                torch._foreach_mul_(x1, sqrt_bc2 / (1.0 - b1**step))
        else:
            x1 = m1
        o1 = output_map(x1, "newton-schulz", **ns)
        d = list(torch._foreach_add(o1, state.o2, alpha=alpha)) if alpha != 0 else o1
    slow = torch._foreach_add(state.slow, grads)
    m2, o2 = list(state.m2), list(state.o2)
    if step % slow_every == 0:
        n_slow += 1
        if variant == "literal":
            m2 = torch._foreach_add(state.m2, slow, alpha=b3)
            o2 = output_map(m2, "newton-schulz", **ns)
        else:
            m2 = torch._foreach_lerp(state.m2, torch._foreach_div(slow, float(slow_every)), 1 - b3)
            if precondition:
                x2 = torch._foreach_div(m2, den)
                if ns_steps == 0:
                    torch._foreach_mul_(x2, sqrt_bc2 / (1.0 - b3**n_slow))
            else:
                x2 = m2
            o2 = output_map(x2, "newton-schulz", **ns)
        slow = torch._foreach_mul(slow, 0.0)
    new = M3State(list(m1), list(v), list(m2), list(slow), list(o2))
    return d, new, n_slow


class M3(NestedOptimizer):
    """Multi-scale Momentum Muon (Algorithm 1), ``literal`` or ``stabilised`` (module docstring).

    Tensors with fewer than two dimensions go to the AdamW fallback group. Tensors with more
    than two are orthogonalised on their matrix view [shape[0], rest].

    Args:
        params: parameters or parameter groups.
        lr: learning rate eta.
        betas: (b1, b2, b3): fast momentum, second moment, slow momentum.
        alpha: weight of the slow momentum's output O2.
        slow_every: f, the slow memory's update period in steps.
        eps: epsilon of the second-moment denominator.
        weight_decay: decoupled weight decay.
        variant: ``stabilised`` (default) or ``literal``.
        precondition: divide by the second moment (stabilised only; the literal always does).
        ns_steps, ns_coefficients, ns_eps, ns_dtype: the Newton–Schulz iteration.
        adjust_lr_fn: Muon's shape factor (stabilised only): ``original``, ``match_rms_adamw``
            or ``none``.
        foreach: foreach kernels and batched Newton–Schulz over equal shapes.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.95, 0.95, 0.9),
        alpha: float = 0.5,
        slow_every: int = 100,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        variant: str = "stabilised",
        precondition: bool = True,
        ns_steps: int = 5,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        ns_eps: float = NS_EPS,
        ns_dtype: str | None = None,
        adjust_lr_fn: str | None = None,
        fallback_betas: tuple[float, float] = (0.9, 0.95),
        fallback_eps: float = 1e-8,
        foreach: bool = True,
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r}; use one of {VARIANTS}")
        if len(betas) != 3 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be three numbers in [0, 1), got {betas}")
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if slow_every < 1:
            raise ValueError(f"slow_every must be >= 1, got {slow_every}")
        if not 0 <= ns_steps < 100:
            raise ValueError(f"ns_steps must be in [0, 100), got {ns_steps}")
        if adjust_lr_fn is not None and adjust_lr_fn not in ADJUST_LR_FNS:
            raise ValueError(f"adjust_lr_fn={adjust_lr_fn!r}; use one of {ADJUST_LR_FNS}")
        defaults = dict(lr=lr, betas=tuple(betas), alpha=alpha, slow_every=slow_every, eps=eps,
                        weight_decay=weight_decay, variant=variant, precondition=precondition,
                        ns_steps=ns_steps, ns_coefficients=tuple(ns_coefficients),
                        ns_eps=ns_eps, ns_dtype=ns_dtype, adjust_lr_fn=adjust_lr_fn)  # fmt: skip
        super().__init__(params, defaults, fallback_betas=fallback_betas,
                         fallback_eps=fallback_eps, foreach=foreach)  # fmt: skip

    def supports(self, p: Tensor) -> bool:
        return p.ndim >= 2

    _KEYS = ("m1", "v", "m2", "slow", "o2")

    def _method_step(self, group: dict[str, Any], params: list[Tensor]) -> None:
        by_step: dict[tuple[int, int], list[Tensor]] = {}
        for p in params:
            st = self.state[p]
            if "m1" not in st:
                st["step"], st["n_slow"] = 0, 0
                for key in self._KEYS:
                    st[key] = torch.zeros_like(p)
            st["step"] += 1
            by_step.setdefault((st["step"], st["n_slow"]), []).append(p)
        hp = {k: group[k] for k in ("betas", "alpha", "slow_every", "eps", "variant",
                                    "precondition", "ns_steps", "ns_coefficients", "ns_eps",
                                    "ns_dtype")}  # fmt: skip
        for (step, n_slow), ps in by_step.items():
            state = M3State(*([self.state[p][k] for p in ps] for k in self._KEYS))
            d, new, n_slow = m3_update(
                [p.grad for p in ps], state, step, n_slow, batched=group["foreach"], **hp
            )
            for key, fresh in zip(self._KEYS, new):
                store(self.state, ps, key, fresh)
            for p in ps:
                self.state[p]["n_slow"] = n_slow
            self._apply(group, ps, d, muon_lrs(group, ps, scaled=group["variant"] == "stabilised"))
