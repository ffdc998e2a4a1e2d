"""Shared machinery of the nestlearn optimizers: the AdamW fallback group and the step loop.

Every optimizer in :mod:`nestlearn.optim` is a ``torch.optim.Optimizer`` whose parameter
groups carry a boolean key ``use_fallback``:

* ``use_fallback=False`` groups are updated by the optimizer's own method;
* ``use_fallback=True`` groups are updated by AdamW (decoupled weight decay, the group's
  ``lr`` and ``weight_decay``, betas ``fallback_betas``, epsilon ``fallback_eps``), with the
  same math as ``torch.optim.AdamW``.

A parameter the method cannot handle (e.g. a 1-D tensor for Newton–Schulz, a matrix that is
not an ``nn.Linear`` weight for DeltaGD) is moved, when its group is added, into a fallback
group that copies the group's other keys; the move is logged, never silent. One optimizer
object therefore holds everything, with one ``state_dict``, and a trainer that rescales every
group's ``lr`` (from its ``initial_lr``) schedules both parts.

Precision: optimizer state and element-wise math live in the parameter's dtype, as in torch;
Newton–Schulz runs in its own ``ns_dtype`` (see ``newton_schulz.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

log = logging.getLogger(__name__)

FALLBACK_BETAS = (0.9, 0.95)
FALLBACK_EPS = 1e-8


def as_matrix(t: Tensor) -> Tensor:
    """View a tensor as a matrix [R, C]: 0-D and 1-D tensors become one row [1, n]; tensors with
    more than two dimensions keep their first axis as rows and flatten the rest (conv weights)."""
    if t.ndim == 2:
        return t
    if t.ndim < 2:
        return t.reshape(1, -1)
    return t.reshape(t.shape[0], -1)


def adamw_update(
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    steps: Sequence[int],
    *,
    betas: tuple[float, float],
    eps: float,
    foreach: bool = True,
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """The AdamW direction (pure: returns new tensors, mutates nothing).

    m' = b1 m + (1 - b1) g;  v' = b2 v + (1 - b2) g^2;
    d = (m' / (1 - b1^t)) / (sqrt(v' / (1 - b2^t)) + eps), with ``steps`` = t >= 1 per tensor.
    The caller applies p <- p (1 - lr wd) - lr d, which is ``torch.optim.AdamW``.
    Returns ``(directions, new_exp_avgs, new_exp_avg_sqs)``.
    """
    b1, b2 = betas
    bc1 = [1.0 - b1**t for t in steps]
    bc2_sqrt = [(1.0 - b2**t) ** 0.5 for t in steps]
    if foreach and grads:
        m = torch._foreach_lerp(list(exp_avgs), list(grads), 1.0 - b1)
        v = torch._foreach_mul(list(exp_avg_sqs), b2)
        torch._foreach_addcmul_(v, list(grads), list(grads), value=1.0 - b2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, eps)
        d = torch._foreach_div(m, bc1)
        torch._foreach_div_(d, denom)
        return list(d), list(m), list(v)
    ds, ms, vs = [], [], []
    for g, m0, v0, c1, c2 in zip(grads, exp_avgs, exp_avg_sqs, bc1, bc2_sqrt):
        m = m0.lerp(g, 1.0 - b1)
        v = v0.mul(b2).addcmul_(g, g, value=1.0 - b2)
        ds.append((m / c1) / (v.sqrt() / c2 + eps))
        ms.append(m)
        vs.append(v)
    return ds, ms, vs


def apply_update(
    params: Sequence[Tensor],
    directions: Sequence[Tensor],
    lrs: Sequence[float],
    *,
    lr: float,
    weight_decay: float,
    foreach: bool = True,
) -> None:
    """p <- p (1 - lr wd) - lr_i d_i in place (decoupled weight decay, as AdamW and Muon).

    ``lr`` scales the decay; ``lrs`` are the per-tensor step sizes (lr times any shape factor).
    ``directions`` are cast to each parameter's dtype first.
    """
    dirs = [d if d.dtype == p.dtype else d.to(p.dtype) for p, d in zip(params, directions)]
    if foreach and params:
        if weight_decay != 0:
            torch._foreach_mul_(list(params), 1.0 - lr * weight_decay)
        if all(x == lrs[0] for x in lrs):
            torch._foreach_add_(list(params), dirs, alpha=-lrs[0])
        else:
            torch._foreach_add_(list(params), torch._foreach_mul(dirs, [-x for x in lrs]))
        return
    for p, d, step_lr in zip(params, dirs, lrs):
        if weight_decay != 0:
            p.mul_(1.0 - lr * weight_decay)
        p.add_(d, alpha=-step_lr)


def store(state: Any, params: Sequence[Tensor], key: str, tensors: Sequence[Tensor]) -> None:
    """Put freshly computed state tensors into ``state[p][key]`` (no copy: the pure update
    functions return new tensors, so the old ones are simply dropped)."""
    for p, t in zip(params, tensors):
        state[p][key] = t


def _param_of(item: Any) -> Tensor:
    return item[1] if isinstance(item, tuple) else item


class NestedOptimizer(Optimizer):
    """Base class: the step loop, closures, and the AdamW fallback group (see module docstring).

    Subclasses implement :meth:`supports` (may this method update ``p``?) and
    :meth:`_method_step` (update the parameters with gradients of one non-fallback group).
    """

    def __init__(
        self,
        params: Any,
        defaults: dict[str, Any],
        *,
        fallback_betas: tuple[float, float] = FALLBACK_BETAS,
        fallback_eps: float = FALLBACK_EPS,
        foreach: bool = True,
    ) -> None:
        if not defaults.get("lr", 0) > 0:
            raise ValueError(f"lr must be > 0, got {defaults.get('lr')}")
        if defaults.get("weight_decay", 0) < 0:
            raise ValueError(f"weight_decay must be >= 0, got {defaults['weight_decay']}")
        if len(fallback_betas) != 2 or not all(0 <= b < 1 for b in fallback_betas):
            raise ValueError(f"fallback_betas must be two numbers in [0, 1), got {fallback_betas}")
        defaults = {
            **defaults,
            "use_fallback": False,
            "fallback_betas": tuple(fallback_betas),
            "fallback_eps": fallback_eps,
            "foreach": foreach,
        }
        super().__init__(params, defaults)

    # -- what the method can take ---------------------------------------------------------------
    def supports(self, p: Tensor) -> bool:
        """Whether the method (not the fallback) can update parameter ``p``."""
        return True

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As ``Optimizer.add_param_group``, but parameters the method cannot handle are moved to
        a fallback (AdamW) group that copies this group's keys, and the move is logged."""
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        if not param_group.get("use_fallback", False):
            bad = [x for x in params if not self.supports(_param_of(x))]
            if bad:
                good = [x for x in params if self.supports(_param_of(x))]
                shapes = sorted({tuple(_param_of(x).shape) for x in bad})
                log.info(
                    "%s: %d parameter(s) it cannot update (shapes %s) go to the AdamW fallback "
                    "group",
                    type(self).__name__,
                    len(bad),
                    shapes[:6],
                )
                if good:
                    super().add_param_group({**param_group, "params": good})
                super().add_param_group({**param_group, "params": bad, "use_fallback": True})
                return
        super().add_param_group({**param_group, "params": params})

    # -- stepping -------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimisation step over every group; ``closure`` re-evaluates the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                if torch.is_complex(p):
                    raise RuntimeError(f"{type(self).__name__} does not support complex params")
            if group["use_fallback"]:
                self._fallback_step(group, params)
            else:
                self._method_step(group, params)
        return loss

    def _method_step(self, group: dict[str, Any], params: list[Tensor]) -> None:
        raise NotImplementedError

    def _buffers(self, params: Sequence[Tensor], key: str = "momentum_buffer") -> list[Tensor]:
        """``state[p][key]`` of each parameter, zeros (``p``'s shape and dtype) where it has none
        yet."""
        out = []
        for p in params:
            st = self.state[p]
            if key not in st:
                st[key] = torch.zeros_like(p)
            out.append(st[key])
        return out

    def _counted_state(self, p: Tensor, keys: Sequence[str]) -> dict[str, Any]:
        """``state[p]`` with this step counted: ``step`` (0 and zero ``keys`` tensors the first
        time) incremented, so the first step is 1."""
        st = self.state[p]
        if keys[0] not in st:
            st["step"] = 0
            for key in keys:
                st[key] = torch.zeros_like(p)
        st["step"] += 1
        return st

    def _apply(
        self,
        group: dict[str, Any],
        params: Sequence[Tensor],
        directions: Sequence[Tensor],
        lrs: Sequence[float] | None = None,
    ) -> None:
        """:func:`apply_update` with the group's ``lr`` (each parameter's step size, unless
        ``lrs``), ``weight_decay`` and ``foreach``."""
        lr = group["lr"]
        lrs = [lr] * len(params) if lrs is None else lrs
        apply_update(params, directions, lrs, lr=lr, weight_decay=group["weight_decay"],
                     foreach=group["foreach"])  # fmt: skip

    def _fallback_step(self, group: dict[str, Any], params: list[Tensor]) -> None:
        """AdamW on a fallback group (state keys ``step``, ``exp_avg``, ``exp_avg_sq``)."""
        grads, ms, vs, steps = [], [], [], []
        for p in params:
            st = self._counted_state(p, ("exp_avg", "exp_avg_sq"))
            grads.append(p.grad)
            ms.append(st["exp_avg"])
            vs.append(st["exp_avg_sq"])
            steps.append(st["step"])
        d, m, v = adamw_update(
            grads, ms, vs, steps, betas=group["fallback_betas"], eps=group["fallback_eps"],
            foreach=group["foreach"],
        )  # fmt: skip
        store(self.state, params, "exp_avg", m)
        store(self.state, params, "exp_avg_sq", v)
        self._apply(group, params, d)
