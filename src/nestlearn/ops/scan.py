"""Gated (first-order, diagonal) linear scans and their chunked closed forms.

A gated scan is the recurrence ``h_t = a_t * h_{t-1} + x_t`` with per-token gates ``a_t``. It is
how momentum ("past surprise", ``S_t = eta_t S_{t-1} - theta_t u_t``) and forgetting / weight decay
(``M_t = (1 - alpha_t) M_{t-1} + S_t``) run across tokens in Titans (arXiv 2501.00663 eqs. 13-14;
Nested Learning arXiv 2512.24695 digest §4.5) and in the chunk-wise training of Hope (eqs. 90-91).

Inside a chunk the scan is linear in its inputs, so it is a lower-triangular matrix times the inputs:

    h_t = (prod_{j<=t} a_j) h_0 + sum_{s<=t} (prod_{s<j<=t} a_j) x_s            (t, s in one chunk)

``decay_matrix`` builds that ``[C, C]`` matrix with the "segment-sum" trick of mamba's
``ssd_minimal.segsum``: each entry is its own cumulative sum of log-gates, never the difference of two
long prefix sums, so there is no cancellation when a gate is close to zero and no ``0/0`` when a
gate is exactly zero.

Everything here is a pure tensor function with no host syncs, so it can sit in a hot path.

Axis legend: ``...`` leading batch axes (batch, heads, chunks); ``C`` positions in a chunk.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "FLUSH_LOG",
    "LOG_GATE_MIN",
    "decay_matrix",
    "exp_flush",
    "log_gate",
    "naive_gated_scan",
    "segsum",
]

# A gate below exp(-69) ~ 1e-30 is treated as that value: its contribution is numerically zero in
# float32 and float64 (<= 1e-30 of the old state) while keeping logs and their gradients finite.
LOG_GATE_MIN: float = -69.0
_GATE_MIN: float = 1e-30


# Below float64, decay products under exp(-40) ~ 4e-18 are set to exactly zero. They are invisible
# next to the O(1) diagonal terms at float32 precision (eps ~ 6e-8), and left alone their products
# with data become subnormal floats, which are 10-100x slower on CPUs (measured: a 2048-token
# forward+backward went from 1.2 s to 7.8 s).
FLUSH_LOG: float = -40.0


def exp_flush(x: Tensor) -> Tensor:
    """``exp(x)``, with ``exp(x) := 0`` where ``x < FLUSH_LOG`` unless ``x`` is float64."""
    if x.dtype != torch.float64:
        x = x.masked_fill(x < FLUSH_LOG, float("-inf"))
    return torch.exp(x)


def log_gate(a: Tensor) -> Tensor:
    """``log(a)`` for gates ``a`` in ``[0, 1]``, with ``a`` clamped below at 1e-30.

    Clamping the gate (not the log) makes the gradient exactly zero where the gate is clamped
    instead of ``0 * inf = nan``.

    Args:
        a: gates, any shape, values in ``[0, 1]``.

    Returns:
        ``log(max(a, 1e-30))``, same shape and dtype.
    """
    return torch.log(a.clamp_min(_GATE_MIN))


def segsum(log_a: Tensor) -> Tensor:
    """Segment sums of log-gates: ``out[..., t, s] = sum_{s < j <= t} log_a[..., j]`` for ``s <= t``.

    Entries above the diagonal (``s > t``) are ``-inf`` so that ``exp`` maps them to exactly zero.
    Each entry is accumulated from zero (masked cumulative sum), not as ``L_t - L_s``.

    Args:
        log_a: ``[..., C]`` log-gates.

    Returns:
        ``[..., C, C]`` segment sums (diagonal = 0, strict upper triangle = ``-inf``).
    """
    C = log_a.shape[-1]
    x = log_a.unsqueeze(-1).expand(*log_a.shape, C)  # x[..., t, s] = log_a[..., t]
    strict = torch.ones(C, C, dtype=torch.bool, device=log_a.device).tril(-1)
    x = x.masked_fill(~strict, 0.0)  # keep only rows t > s
    out = x.cumsum(dim=-2)  # sum over s < j <= t
    causal = torch.ones(C, C, dtype=torch.bool, device=log_a.device).tril()
    return out.masked_fill(~causal, float("-inf"))


def decay_matrix(log_a: Tensor) -> Tensor:
    """Lower-triangular decay matrix ``D[..., t, s] = prod_{s < j <= t} a_j`` (``s <= t``), else 0.

    ``h = D @ x`` is the gated scan ``h_t = a_t h_{t-1} + x_t`` inside a chunk started from zero.

    Built as ``exp(L_t - L_s)`` from one prefix sum ``L`` (what chunked SSM kernels do): about 3x
    cheaper, forward and backward, than the exact masked-cumsum :func:`segsum`. The price is a
    relative error of about ``|L| * eps`` per entry, i.e. below ``1e-5`` in float32 for gates in
    ``[1e-3, 1]`` and chunks of 64; a gate clamped at ``1e-30`` (``L`` drops by 69) costs about
    ``4e-6``. float64 inputs are exact to ``1e-13``.

    Args:
        log_a: ``[..., C]`` log-gates (see :func:`log_gate`).

    Returns:
        ``[..., C, C]`` with ones on the diagonal and zeros above it (and entries below
        ``exp(FLUSH_LOG)`` flushed to zero below float64, see :func:`exp_flush`).
    """
    C = log_a.shape[-1]
    L = log_a.cumsum(-1)
    seg = L.unsqueeze(-1) - L.unsqueeze(-2)  # [..., t, s] = sum_{s < j <= t} log a_j
    drop = ~torch.ones(C, C, dtype=torch.bool, device=log_a.device).tril()
    if log_a.dtype != torch.float64:
        drop = drop | (seg < FLUSH_LOG)
    # mask before exp: exp of the (positive) upper triangle could overflow and poison backward
    return torch.exp(seg.masked_fill(drop, float("-inf")))


def naive_gated_scan(a: Tensor, x: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Reference loop for ``h_t = a_t * h_{t-1} + x_t`` along dim 1.

    Args:
        a: ``[B, T, *S]`` gates (broadcastable against ``x``; trailing singleton axes allowed).
        x: ``[B, T, *S]`` inputs.
        h0: ``[B, *S]`` initial state (zeros when ``None``).

    Returns:
        ``(h, h_T)`` with ``h`` of shape ``[B, T, *S]`` (every state) and ``h_T`` the last state.
    """
    h = torch.zeros_like(x[:, 0]) if h0 is None else h0
    out = []
    for t in range(x.shape[1]):
        h = a[:, t] * h + x[:, t]
        out.append(h)
    return torch.stack(out, dim=1), h
