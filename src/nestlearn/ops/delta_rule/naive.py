"""Reference loops for the delta rule (DeltaNet) and the gated delta rule (Gated DeltaNet).

These are the specification the chunked forms in ``chunk.py`` are tested against: one Python
iteration per token, nothing clever. Inner math in float32 (float64 for float64 inputs); ``o`` is
cast back to ``q.dtype`` and the final state stays in the compute dtype.

Recurrence (state ``S: [K, V]`` per sequence and head, read ``o_t = scale * S_t^T q_t``):

    plain (Schlag et al. 2021; Yang et al. 2024, DeltaNet):
        S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T
    gated (Yang, Kautz & Hatamizadeh 2024, Gated DeltaNet), alpha_t = exp(g_t) in (0, 1]:
        S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T

In the Nested Learning view (arXiv 2512.24695, eq. 65 of the digest's MIRAS table) this is one
step of gradient descent with learning rate ``beta_t`` on the l2 regression loss
``||S^T k_t - v_t||^2 / 2`` (plus a retention/decay term ``alpha_t`` for the gated form).

Axis legend: B batch, T tokens, H heads, K key dim, V value dim.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nestlearn.ops.common import matrix_state
from nestlearn.ops.delta_rule.common import check_delta_inputs, compute_dtype

__all__ = ["naive_recurrent_delta_rule", "naive_recurrent_gated_delta_rule"]


def _recurrent(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    g: Tensor | None,
    initial_state: Tensor | None,
    scale: float | None,
) -> tuple[Tensor, Tensor]:
    B, T, H, K = q.shape
    V = v.shape[-1]
    cdt = compute_dtype(q)
    scale = K**-0.5 if scale is None else scale
    qf, kf, vf, bf = (t.to(cdt) for t in (q, k, v, beta))
    S = matrix_state(initial_state, (B, H, K, V), cdt, q)
    out = []
    for t in range(T):
        if g is not None:
            S = S * g[:, t].to(cdt).exp()[..., None, None]  # alpha_t S_{t-1}
        kt = kf[:, t]  # [B, H, K]
        pred = torch.einsum("bhk,bhkv->bhv", kt, S)  # what the memory recalls for k_t
        u = bf[:, t, :, None] * (vf[:, t] - pred)  # [B, H, V]: beta_t (v_t - S^T k_t)
        S = S + kt[..., :, None] * u[..., None, :]
        out.append(torch.einsum("bhk,bhkv->bhv", qf[:, t] * scale, S))
    return torch.stack(out, dim=1).to(q.dtype), S


def naive_recurrent_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    initial_state: Tensor | None = None,
    *,
    scale: float | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Delta rule, one token at a time (the reference for :func:`chunk_delta_rule`).

    Args:
        q: ``[B, T, H, K]`` queries.
        k: ``[B, T, H, K]`` keys; the update is stable when ``beta_t ||k_t||^2 <= 2`` (the layers
            L2-normalise keys).
        v: ``[B, T, H, V]`` values.
        beta: ``[B, T, H]`` write strengths (learning rates), usually in ``(0, 1)``.
        initial_state: ``[B, H, K, V]`` memory before the first token; zeros when ``None``.
        scale: read scale; ``K ** -0.5`` when ``None``.
        chunk_size: ignored; accepted so the naive and chunked forms are interchangeable.

    Returns:
        ``(o, final_state)``: ``o: [B, T, H, V]`` in ``q.dtype``, ``final_state: [B, H, K, V]`` in
        the compute dtype.
    """
    check_delta_inputs(q, k, v, beta, None, initial_state, chunk_size)
    return _recurrent(q, k, v, beta, None, initial_state, scale)


def naive_recurrent_gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    initial_state: Tensor | None = None,
    *,
    scale: float | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Gated delta rule, one token at a time (the reference for :func:`chunk_gated_delta_rule`).

    Args:
        q, k, v, beta, initial_state, scale, chunk_size: as in :func:`naive_recurrent_delta_rule`.
        g: ``[B, T, H]`` log-decays ``g_t = log(alpha_t) <= 0``.

    Returns:
        ``(o [B, T, H, V], final_state [B, H, K, V])`` as in :func:`naive_recurrent_delta_rule`.
    """
    check_delta_inputs(q, k, v, beta, g, initial_state, chunk_size)
    return _recurrent(q, k, v, beta, g, initial_state, scale)
