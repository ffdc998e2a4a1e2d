"""Reference loop for the diagonal-plus-low-rank (DPLR) delta rule of RWKV-7: the spec of ``chunk.py``.

One Python iteration per token. State ``S: [K, V]`` per sequence and head (it maps keys to values by
``S^T r``). With per-channel log-decays ``w_t <= 0`` (RWKV-7 "Goose", Peng et al. 2025, arXiv
2503.14456, eq. 14 in the value-by-key form ``S^T``):

    S_t = diag(exp(w_t)) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T
    o_t = scale * S_t^T r_t

RWKV-7 uses ``a_t = -kappa_t``, ``b_t = kappa_t * alpha_t`` (``kappa`` the l2-normalised "removal
key", ``alpha`` the in-context learning rate), so the transition ``diag(w) - kappa (kappa * alpha)^T``
is a delta-rule erase along ``kappa`` on top of a per-channel decay. In Nested Learning terms
(arXiv 2512.24695, the digest's eq. 65 row) this is one gradient step on an l2 regression objective
with a data-dependent, per-channel retention gate.

Inner math in float32 (float64 for float64 inputs); ``o`` is cast back to ``r.dtype``.

Axis legend: B batch, T tokens, H heads, K key dim, V value dim.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nestlearn.ops.common import matrix_state
from nestlearn.ops.rwkv7.common import check_dplr_inputs, compute_dtype

__all__ = ["naive_recurrent_rwkv7"]


def naive_recurrent_rwkv7(
    r: Tensor,
    w: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    initial_state: Tensor | None = None,
    *,
    scale: float = 1.0,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """The DPLR recurrence token by token (same signature as :func:`chunk_rwkv7`).

    Args:
        r: ``[B, T, H, K]`` receptance (query). w: ``[B, T, H, K]`` log-decays (``<= 0``).
        k: ``[B, T, H, K]`` keys. v: ``[B, T, H, V]`` values.
        a, b: ``[B, T, H, K]`` the low-rank part of the transition ``b a^T``.
        initial_state: ``[B, H, K, V]``; zeros when ``None``.
        scale: read scale. chunk_size: ignored (shared signature).

    Returns:
        ``(o [B, T, H, V] in r.dtype, final_state [B, H, K, V] in the compute dtype)``.
    """
    del chunk_size
    check_dplr_inputs(r, w, k, v, a, b, initial_state, None)
    B, T, H, K = r.shape
    V = v.shape[-1]
    cdt = compute_dtype(r)
    rf, wf, kf, vf, af, bf = (t.to(cdt) for t in (r, w, k, v, a, b))
    S = matrix_state(initial_state, (B, H, K, V), cdt, r)
    out = []
    for t in range(T):
        u = torch.einsum("bhk,bhkv->bhv", af[:, t], S)  # a_t^T S_{t-1}
        S = (
            wf[:, t].exp()[..., None] * S
            + bf[:, t, ..., None] * u[..., None, :]
            + kf[:, t, ..., None] * vf[:, t, ..., None, :]
        )
        out.append(torch.einsum("bhk,bhkv->bhv", rf[:, t], S) * scale)
    return torch.stack(out, dim=1).to(r.dtype), S
