"""Reference loop for Comba (Hu et al. 2025, arXiv 2506.02475): the spec of ``chunk.py``.

State ``S: [K, V]`` per sequence and head. Comba is a gated delta rule whose erase direction ``p_t``
differs from the write key ``k_t`` (a scalar-plus-low-rank transition, "closed-loop control"):

    S'_t = exp(g_t) S_{t-1}                                 decay first (as the gated delta rule)
    S_t  = S'_t + beta_t k_t (v_t - S'_t^T p_t)^T             write k -> v, correcting along p
         = exp(g_t) (I - beta_t k_t p_t^T) S_{t-1} + beta_t k_t v_t^T
    o_t  = scale * S_t^T q_t

The Comba layer uses ``p_t = d_h k_t`` with a learned per-head ``d_h in (0, 1)`` and reads with
``q_t - D_h p_t`` (output correction). With ``p = k`` this is exactly the gated delta rule.

Inner math in float32 (float64 for float64 inputs); ``o`` is cast back to ``q.dtype``.

Axis legend: B batch, T tokens, H heads, K key dim, V value dim.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nestlearn.ops.comba.common import check_comba_inputs, compute_dtype
from nestlearn.ops.common import matrix_state

__all__ = ["naive_recurrent_comba"]


def naive_recurrent_comba(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    p: Tensor,
    g: Tensor,
    beta: Tensor,
    initial_state: Tensor | None = None,
    *,
    scale: float | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Comba token by token (same signature as :func:`chunk_comba`; ``chunk_size`` is ignored).

    Args:
        q, k, p: ``[B, T, H, K]``; v: ``[B, T, H, V]``; g (log-decay ``<= 0``), beta: ``[B, T, H]``.
        initial_state: ``[B, H, K, V]``; zeros when ``None``. scale: ``K ** -0.5`` when ``None``.

    Returns:
        ``(o [B, T, H, V] in q.dtype, final_state [B, H, K, V] in the compute dtype)``.
    """
    del chunk_size
    check_comba_inputs(q, k, v, p, g, beta, initial_state, None)
    B, T, H, K = q.shape
    V = v.shape[-1]
    cdt = compute_dtype(q)
    scale = K**-0.5 if scale is None else scale
    qf, kf, vf, pf, gf, bf = (t.to(cdt) for t in (q, k, v, p, g, beta))
    S = matrix_state(initial_state, (B, H, K, V), cdt, q)
    out = []
    for t in range(T):
        S = gf[:, t].exp()[..., None, None] * S
        pred = torch.einsum("bhk,bhkv->bhv", pf[:, t], S)  # S'^T p_t
        u = bf[:, t, :, None] * (vf[:, t] - pred)
        S = S + kf[:, t, ..., None] * u[..., None, :]
        out.append(torch.einsum("bhk,bhkv->bhv", qf[:, t] * scale, S))
    return torch.stack(out, dim=1).to(q.dtype), S
