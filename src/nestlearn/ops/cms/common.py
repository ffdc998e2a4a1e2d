"""State type, level MLPs, inner-gradient formulas and input checks shared by the CMS ops.

One Continuum Memory System level (Nested Learning, arXiv 2512.24695, section 7.1) is an MLP
whose weights are a per-sequence fast weight ``W_c = W_0 + Delta_c``: ``W_0`` is the meta-learned
initial state (an ordinary parameter, eq. 73) and ``Delta_c`` the in-context change accumulated
by eq. 71 up to chunk ``c``. Two MLP shapes (weights listed input side first):

* ``"swiglu"``: ``b = W_out (silu(W_gate x) * W_up x)``; ``w_in = [W_gate; W_up]: [2H, D]``.
* ``"gelu" | "silu" | "relu"``: ``b = W_out s(W_in x)``; ``w_in: [H, D]``.

``w_out`` is ``[D, H]``. The level returns only its branch ``b`` (the residual is added by the
caller), so a single static SwiGLU level is exactly the Transformer++ FFN.

Inner objective of the local ("next") mode, per token ``t`` (see ``README.md``)::

    l_t(W) = 1/2 ||MLP_W(x_t) - x_{t+1}||^2        key = this token's input, value = the next one's

Axis legend: B batch, T tokens, C tokens of a chunk, D model width, H level hidden width,
Hin = 2H (swiglu) or H.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Activation",
    "CMSLevelState",
    "Objective",
    "Term",
    "act_backward",
    "act_forward",
    "add",
    "check_inputs",
    "level_grads",
    "level_forward",
]

Activation = Literal["swiglu", "gelu", "silu", "relu"]
Objective = Literal["next", "external"]
ACTIVATIONS = ("swiglu", "gelu", "silu", "relu")
OBJECTIVES = ("next", "external")

Pair = tuple[Tensor, Tensor]


class CMSLevelState(NamedTuple):
    """Per-sequence state of one CMS level between calls (all tensors ``[B, ...]``).

    ``None`` stands for an all-zero tensor, so a fresh sequence allocates nothing.

    Attributes:
        delta: ``(dW_in [B, Hin, D], dW_out [B, D, H])``: fast weights of the current chunk minus
            the meta-learned initial weights.
        grad: the same shapes: sum of the inner-gradient terms of the current chunk's finished
            tokens (eq. 71's sum, not yet applied).
        pending: ``[B, n, D]`` inputs of the current chunk's last ``n`` tokens whose terms are not
            in ``grad`` yet (``"next"`` objective only). The last one's target is the next
            token's input, so it waits for the next call; the fast op defers a whole chunk's
            terms to compute them in one batch (``fold_pending`` gives a canonical form).
        anchor: nested variant: the level's per-sequence re-initialisation point minus ``W_0``
            (eq. 72); the level is reset to it every ``reset_period`` tokens.
        anchor_grad: nested variant: sum of the level's gradients since its last reset.
        position: tokens consumed so far; chunk boundaries sit at multiples of the period.
    """

    delta: Pair | None = None
    grad: Pair | None = None
    pending: Tensor | None = None
    anchor: Pair | None = None
    anchor_grad: Pair | None = None
    position: int = 0

    def detach(self) -> CMSLevelState:
        """Cut the autograd history (truncated backprop through time); values are shared."""
        return self._map(lambda t: t.detach())

    def to(self, dtype: torch.dtype) -> CMSLevelState:
        """Cast every tensor to ``dtype`` (differentiable)."""
        return self._map(lambda t: t.to(dtype))

    def _map(self, fn) -> CMSLevelState:  # noqa: ANN001 - a tensor -> tensor function
        def pair(p: Pair | None) -> Pair | None:
            return None if p is None else (fn(p[0]), fn(p[1]))

        return CMSLevelState(
            pair(self.delta),
            pair(self.grad),
            None if self.pending is None else fn(self.pending),
            pair(self.anchor),
            pair(self.anchor_grad),
            self.position,
        )


def add(a: Pair | None, b: Pair | None) -> Pair | None:
    """Sum of two weight pairs where ``None`` means zero."""
    if a is None:
        return b
    if b is None:
        return a
    return (a[0] + b[0], a[1] + b[1])


def scale(a: Pair | None, keep: float) -> Pair | None:
    """``keep * a`` with ``None`` = zero (the retention of a level's fast-weight offset)."""
    if a is None or keep == 1.0:
        return a
    return (a[0] * keep, a[1] * keep)


def scaled_sub(a: Pair | None, lr: Tensor, g: Pair | None) -> Pair | None:
    """``a - lr * g`` with ``None`` = zero (eq. 71's step)."""
    if g is None:
        return a
    if a is None:
        return (-lr * g[0], -lr * g[1])
    neg = -lr
    return (torch.addcmul(a[0], neg, g[0]), torch.addcmul(a[1], neg, g[1]))


def act_forward(h: Tensor, activation: str) -> Tensor:
    """Hidden activation ``a = s(h)``; for ``"swiglu"`` ``h = [g, u]`` and ``a = silu(g) * u``."""
    if activation == "swiglu":
        g, u = h.chunk(2, dim=-1)
        return F.silu(g) * u
    if activation == "gelu":
        return F.gelu(h)
    if activation == "silu":
        return F.silu(h)
    return F.relu(h)


def act_backward(h: Tensor, da: Tensor, activation: str) -> Tensor:
    """``dL/dh`` from ``dL/da`` (written out so it stays differentiable for meta-gradients)."""
    if activation == "swiglu":
        g, u = h.chunk(2, dim=-1)
        sg = torch.sigmoid(g)
        silu = g * sg
        return torch.cat([da * u * sg * (1 + g * (1 - sg)), da * silu], dim=-1)
    if activation == "gelu":
        cdf = 0.5 * (1 + torch.erf(h * 0.7071067811865476))
        pdf = torch.exp(-0.5 * h * h) * 0.3989422804014327
        return da * (cdf + h * pdf)
    if activation == "silu":
        sg = torch.sigmoid(h)
        return da * sg * (1 + h * (1 - sg))
    return da * (h > 0).to(da.dtype)


Term = tuple[Tensor | None, Pair]
"""``(coefficient, (A_in [B, Hin, D], A_out [B, D, H]))``: a per-sequence weight offset
``coefficient * A`` (``None`` = 1). The fast weights are ``W_0 + sum of the terms``."""


def _add_terms(
    base: Tensor, x: Tensor, mats: list[tuple[Tensor | None, Tensor]], t: bool
) -> Tensor:
    """``base + sum_k coef_k * x @ M_k^T`` (``t``) or ``... x @ M_k``, activation-sized results."""
    for coef, m in mats:
        mm = m.transpose(1, 2) if t else m
        base = (
            torch.baddbmm(base, x, mm)
            if coef is None
            else torch.addcmul(base, coef, torch.bmm(x, mm))
        )
    return base


def level_forward(
    x: Tensor,
    w_in: Tensor,
    w_out: Tensor,
    terms: list[Term] | tuple[()] = (),
    activation: str = "swiglu",
    h0: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One level's MLP over a chunk with the chunk's weights ``W_0 + sum(terms)``.

    The shared part ``x W_0^T`` is a plain ``F.linear`` (pass ``h0`` to reuse one computed for
    the whole sequence) and each per-sequence offset is applied to the activations (``baddbmm``),
    so the fast weights are never materialised, a scalar learning rate multiplies an
    activation-sized product (its gradient needs no weight-sized tensor), and zero offsets
    reproduce the static MLP exactly.

    Args:
        x: ``[B, C, D]``. w_in: ``[Hin, D]``. w_out: ``[D, H]``. terms: see :data:`Term`.
        h0: optional precomputed ``F.linear(x, w_in)``.
    Returns:
        ``(b [B, C, D], h [B, C, Hin], a [B, C, H])``.
    """
    h = F.linear(x, w_in) if h0 is None else h0
    h = _add_terms(h, x, [(c, p[0]) for c, p in terms], True)
    a = act_forward(h, activation)
    b = _add_terms(F.linear(a, w_out), a, [(c, p[1]) for c, p in terms], True)
    return b, h, a


def level_grads(
    x: Tensor,
    v: Tensor,
    b: Tensor,
    h: Tensor,
    a: Tensor,
    w_out: Tensor,
    terms: list[Term] | tuple[()],
    activation: str,
) -> Pair:
    """Summed inner gradients of ``sum_t 1/2 ||b_t - v_t||^2`` at the chunk's weights.

    All of ``x, v, b`` are ``[B, n, D]``, ``h`` ``[B, n, Hin]``, ``a`` ``[B, n, H]``; ``w_out`` ``[D, H]``
    with ``terms`` as in :func:`level_forward`. Returns ``(G_in [B, Hin, D], G_out [B, D, H])``:
    the token sum of eq. 71 as batched matmuls, no per-token loop.
    """
    e = b - v  # [B, n, D]
    g_out = torch.matmul(e.transpose(1, 2), a)  # [B, D, H]
    da = _add_terms(torch.matmul(e, w_out), e, [(c, p[1]) for c, p in terms], False)  # [B, n, H]
    dh = act_backward(h, da, activation)  # [B, n, Hin]
    g_in = torch.matmul(dh.transpose(1, 2), x)  # [B, Hin, D]
    return g_in, g_out


def check_retention(retention: float, reset_period: int | None) -> None:
    """``retention`` must lie in ``[0, 1)``; the nested variant (``reset_period``) restarts the
    level from its anchor instead and takes none."""
    if not 0.0 <= float(retention) < 1.0:
        raise ValueError(f"CMS retention must be in [0, 1), got {retention}")
    if retention and reset_period is not None:
        raise ValueError(
            "CMS retention applies to the sequential and independent variants; the nested "
            "variant restarts each level from its anchor (eq. 72): set retention=0"
        )


def check_inputs(
    x: Tensor,
    w_in: Tensor,
    w_out: Tensor,
    period: int,
    activation: str,
    objective: str,
    reset_period: int | None,
    state: CMSLevelState | None,
) -> None:
    """Validate shapes and options with messages that name the fix."""
    if x.ndim != 3:
        raise ValueError(f"x must be [batch, time, dim], got shape {tuple(x.shape)}")
    D = x.shape[-1]
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not known; choose one of {ACTIVATIONS}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective={objective!r} is not known; choose one of {OBJECTIVES}")
    H = w_out.shape[-1]
    hin = 2 * H if activation == "swiglu" else H
    if tuple(w_in.shape) != (hin, D) or tuple(w_out.shape) != (D, H):
        raise ValueError(
            f"level weights must be w_in [{hin}, {D}] and w_out [{D}, {H}] for "
            f"activation={activation!r}, got {tuple(w_in.shape)} and {tuple(w_out.shape)}"
        )
    if period < 1:
        raise ValueError(f"period must be a positive number of tokens, got {period}")
    if reset_period is not None and (reset_period <= period or reset_period % period):
        raise ValueError(
            f"reset_period={reset_period} must be a larger multiple of period={period} "
            f"(nested levels reset at the end of the slower level's chunk); try {4 * period}"
        )
    if state is not None and state.delta is not None and state.delta[0].shape[0] != x.shape[0]:
        raise ValueError(
            f"state was made for batch {state.delta[0].shape[0]}, got batch {x.shape[0]}; "
            "build it with init_state(batch_size=...)"
        )
