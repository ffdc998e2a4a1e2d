"""Reference loop for one CMS level: the spec that ``chunk.chunk_cms_level`` must equal.

A plain loop over tokens with per-sequence weights and inner gradients taken by autograd (no
hand-written derivative), so it shares no math with the fast path beyond the definition. Same
signature and state as the fast op. Runs in float32 (float64 for float64 input), autocast off.

Per token ``t`` at absolute position ``p``::

    if a previous token is pending:  grad += d/dW 1/2 ||MLP_W(x_{t-1}) - x_t||^2   at the current W
    if p % period == 0 and p > 0:    Delta -= lr * grad; grad = 0               (NL eq. 71)
                                     nested: every reset_period tokens, A -= reset_lr * (sum of
                                     the grads since the last reset); Delta = A  (eq. 72)
    y_t = MLP_{W_0 + Delta}(x_t)

Axis legend: B batch, T tokens, D width, H hidden, Hin = 2H or H.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nestlearn.ops.cms.common import (
    Activation,
    CMSLevelState,
    Objective,
    check_inputs,
    check_retention,
)
from nestlearn.ops.common import compute_dtype

__all__ = ["naive_cms_level"]


def _mlp(k: Tensor, wi: Tensor, wo: Tensor, activation: str) -> Tensor:
    """``k: [B, D]``, ``wi: [B, Hin, D]``, ``wo: [B, D, H]`` -> ``[B, D]``."""
    h = torch.einsum("bd,bhd->bh", k, wi)
    if activation == "swiglu":
        g, u = h.chunk(2, dim=-1)
        a = F.silu(g) * u
    else:
        a = {"gelu": F.gelu, "silu": F.silu, "relu": F.relu}[activation](h)
    return torch.einsum("bh,bdh->bd", a, wo)


def naive_cms_level(
    x: Tensor,
    w_in: Tensor,
    w_out: Tensor,
    lr: Tensor | float,
    initial_state: CMSLevelState | None = None,
    *,
    period: int,
    activation: Activation = "swiglu",
    objective: Objective = "next",
    reset_period: int | None = None,
    reset_lr: Tensor | float | None = None,
    first_order: bool = False,
    update: bool = True,
    output_final_state: bool = False,
    retention: float = 0.0,
) -> tuple[Tensor, CMSLevelState | None]:
    """Token-by-token reference of :func:`nestlearn.ops.cms.chunk_cms_level` (same arguments).

    Returns ``(y [B, T, D], final_state or None)``; state tensors are materialised (zeros rather
    than ``None``).
    """
    check_inputs(x, w_in, w_out, period, activation, objective, reset_period, initial_state)
    check_retention(retention, reset_period)
    keep = 1.0 - float(retention)
    cdt = compute_dtype(x)
    B, T, D = x.shape
    with torch.enable_grad(), torch.autocast(device_type=x.device.type, enabled=False):
        xc, wi0, wo0 = x.to(cdt), w_in.to(cdt), w_out.to(cdt)
        lr_t = torch.as_tensor(lr, dtype=cdt, device=x.device)
        rlr = lr_t if reset_lr is None else torch.as_tensor(reset_lr, dtype=cdt, device=x.device)
        st = (initial_state or CMSLevelState()).to(cdt)

        def zeros() -> list[Tensor]:
            return [
                x.new_zeros((B, *wi0.shape), dtype=cdt),
                x.new_zeros((B, *wo0.shape), dtype=cdt),
            ]

        def mat(p: tuple[Tensor, Tensor] | None) -> list[Tensor]:
            return zeros() if p is None else [p[0], p[1]]

        delta, grad = mat(st.delta), mat(st.grad)
        anchor, agrad = mat(st.anchor), mat(st.anchor_grad)

        def term(k: Tensor, v: Tensor, wi: Tensor, wo: Tensor) -> list[Tensor]:
            if first_order or not (wi.requires_grad or wo.requires_grad):
                wi, wo = wi.detach().requires_grad_(), wo.detach().requires_grad_()
                k, v = k.detach(), v.detach()
                loss = 0.5 * (_mlp(k, wi, wo, activation) - v).pow(2).sum()
                return list(torch.autograd.grad(loss, [wi, wo]))
            loss = 0.5 * (_mlp(k, wi, wo, activation) - v).pow(2).sum()
            return list(torch.autograd.grad(loss, [wi, wo], create_graph=True))

        local = objective == "next" and update
        pending = None
        if st.pending is not None:  # deferred inputs: accumulate the pairs whose target is known
            if local or st.pending.shape[1] > 1:
                wi, wo = wi0 + delta[0], wo0 + delta[1]
                for j in range(st.pending.shape[1] - 1):
                    g = term(st.pending[:, j], st.pending[:, j + 1], wi, wo)
                    grad = [grad[i] + g[i] for i in range(2)]
            pending = st.pending[:, -1] if local else None

        ys = []
        for t in range(T):
            p = st.position + t
            wi, wo = wi0 + delta[0], wo0 + delta[1]
            if local and pending is not None:
                g = term(pending, xc[:, t], wi, wo)
                grad = [grad[i] + g[i] for i in range(2)]
            if update and p % period == 0 and p > 0:
                delta = [keep * delta[i] - lr_t * grad[i] for i in range(2)]
                if reset_period is not None:
                    agrad = [agrad[i] + grad[i] for i in range(2)]
                    if p % reset_period == 0:
                        anchor = [anchor[i] - rlr * agrad[i] for i in range(2)]
                        agrad = zeros()
                        delta = list(anchor)
                grad = zeros()
                wi, wo = wi0 + delta[0], wo0 + delta[1]
            ys.append(_mlp(xc[:, t], wi, wo, activation))
            pending = xc[:, t] if local else None
        y = torch.stack(ys, dim=1) if ys else xc.new_zeros(B, 0, D)
    if not output_final_state:
        return y.to(x.dtype), None
    if T == 0 and local:
        pending = st.pending[:, -1] if st.pending is not None else None
    nested = reset_period is not None
    return y.to(x.dtype), CMSLevelState(
        (delta[0], delta[1]),
        (grad[0], grad[1]),
        None if pending is None else pending[:, None],
        (anchor[0], anchor[1]) if nested else None,
        (agrad[0], agrad[1]) if nested else None,
        st.position + T,
    )
