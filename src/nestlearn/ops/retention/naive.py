"""Reference forms of retention (RetNet, Sun et al. 2023, arXiv 2307.08621).

Recurrent form (RetNet eq. 1 with the xPos rotation already applied to ``q`` and ``k`` by the
layer), per sequence and head with a fixed decay ``gamma`` in ``(0, 1]``:

    S_t = gamma S_{t-1} + k_t v_t^T          (state S: [K, V])
    o_t = scale * S_t^T q_t

Parallel form (RetNet eq. 5): ``O = scale * (Q K^T * D) V`` with ``D_ts = gamma^(t - s)`` for
``s <= t`` and 0 above the diagonal, plus the contribution ``scale * gamma^(t+1) Q S_0`` of an
initial state.

In the Nested Learning view (arXiv 2512.24695, eq. 64 of the digest's MIRAS table) retention is
gradient descent on the dot-product objective ``-<S^T k, v>`` with a fixed weight decay
``1 - gamma``: the same "memory" as linear attention with a constant forget gate.

Inner math in float32 (float64 for float64 inputs); ``o`` is cast back to ``q.dtype``, the final
state stays in the compute dtype.

Axis legend: B batch, T tokens, H heads, K key dim, V value dim.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nestlearn.ops.common import matrix_state
from nestlearn.ops.retention.common import check_retention_inputs, compute_dtype

__all__ = ["naive_parallel_retention", "naive_recurrent_retention"]


def naive_recurrent_retention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gamma: Tensor,
    initial_state: Tensor | None = None,
    *,
    scale: float | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Retention one token at a time (the reference for :func:`chunk_retention`).

    Args:
        q: ``[B, T, H, K]`` queries (already rotated by the layer's xPos/RoPE).
        k: ``[B, T, H, K]`` keys (already rotated).
        v: ``[B, T, H, V]`` values.
        gamma: ``[H]`` per-head decays in ``(0, 1]`` (RetNet: ``1 - 2^(-5-h)``).
        initial_state: ``[B, H, K, V]`` state before the first token; zeros when ``None``.
        scale: read scale; ``K ** -0.5`` when ``None``.
        chunk_size: ignored; accepted so the reference and the chunked form are interchangeable.

    Returns:
        ``(o [B, T, H, V] in q.dtype, final_state [B, H, K, V] in the compute dtype)``.
    """
    check_retention_inputs(q, k, v, gamma, initial_state, chunk_size)
    B, T, H, K = q.shape
    V = v.shape[-1]
    cdt = compute_dtype(q)
    scale = K**-0.5 if scale is None else scale
    qf, kf, vf = (t.to(cdt) for t in (q, k, v))
    gm = gamma.to(cdt)[None, :, None, None]  # [1, H, 1, 1]
    S = matrix_state(initial_state, (B, H, K, V), cdt, q)
    out = []
    for t in range(T):
        S = gm * S + kf[:, t, :, :, None] * vf[:, t, :, None, :]
        out.append(torch.einsum("bhk,bhkv->bhv", qf[:, t] * scale, S))
    return torch.stack(out, dim=1).to(q.dtype), S


def naive_parallel_retention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gamma: Tensor,
    initial_state: Tensor | None = None,
    *,
    scale: float | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Retention in RetNet's parallel form, ``O(T^2)`` memory (a second, loop-free reference).

    Same arguments and returns as :func:`naive_recurrent_retention`.
    """
    check_retention_inputs(q, k, v, gamma, initial_state, chunk_size)
    B, T, H, K = q.shape
    cdt = compute_dtype(q)
    scale = K**-0.5 if scale is None else scale
    qf, kf, vf = (t.to(cdt).transpose(1, 2) for t in (q, k, v))  # [B, H, T, *]
    log_g = gamma.to(cdt).log()[:, None, None]  # [H, 1, 1]
    pos = torch.arange(T, device=q.device, dtype=cdt)
    dist = pos[:, None] - pos[None, :]  # t - s
    causal = dist >= 0
    D = (log_g * dist.clamp_min(0)).exp().masked_fill(~causal, 0.0)  # [H, T, T]
    o = ((qf @ kf.transpose(-1, -2)) * D) @ vf * scale  # [B, H, T, V]
    S = torch.einsum("hs,bhsk,bhsv->bhkv", D[:, -1], kf, vf)  # gamma^(T-1-s) k_s v_s^T
    if initial_state is not None:
        S0 = initial_state.to(cdt)
        decay_t = (log_g[:, :, 0] * (pos + 1)).exp()  # [H, T]: gamma^(t+1)
        o = o + decay_t[None, :, :, None] * (qf @ S0) * scale
        S = S + decay_t[None, :, -1, None, None] * S0
    return o.transpose(1, 2).to(q.dtype), S
