"""Chunk-parallel Comba (WY representation / UT transform), pure PyTorch; exact at any chunk size.

Inner math in float32 (float64 for float64 inputs); ``o`` is cast back to ``q.dtype`` and the final
state stays in the compute dtype.

Contract: equals :func:`~nestlearn.ops.comba.naive.naive_recurrent_comba` for every chunk size
(outputs, final state, gradients of every input). It is the gated delta rule's chunked form
(``ops/delta_rule/README.md``) with the erase key ``p`` in the places where the delta rule reads its
own memory. Per chunk from ``S0``, with ``gamma_t = exp(sum_{j<=t} g_j)`` inside the chunk and
``u_t = beta_t (v_t - gamma_t S_{t-1}'^T p_t)`` the corrected value:

    A_ts = beta_t (gamma_t / gamma_s) p_t . k_s   (s < t)          strictly lower
    W_v  = (I + A)^-1 diag(beta) V,   W_p = (I + A)^-1 diag(beta gamma) P,   U = W_v - W_p S0
    O    = scale [diag(gamma) Q S0 + (M * Q K^T) U],   M_ts = gamma_t / gamma_s (s <= t)
    S_C  = gamma_C S0 + (K * gamma_C / gamma)^T U

Padding tokens (``k = v = p = beta = 0``, ``g = 0``) leave the state unchanged.

Axis legend: B batch, T tokens, H heads, N chunks, C tokens per chunk, K key dim, V value dim.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nestlearn.ops.comba.common import check_comba_inputs, compute_dtype
from nestlearn.ops.common import heads_first, matrix_state, per_chunk
from nestlearn.ops.delta_rule.chunk import auto_chunk_size

__all__ = ["chunk_comba"]


def chunk_comba(
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
    """Comba, chunk-parallel: ``S_t = e^{g_t} (I - beta_t k_t p_t^T) S_{t-1} + beta_t k_t v_t^T``.

    Args:
        q: ``[B, T, H, K]`` queries (the layer passes ``q - D p``, the output correction).
        k: ``[B, T, H, K]`` write keys. p: ``[B, T, H, K]`` erase keys (``p = d k`` in Comba).
        v: ``[B, T, H, V]`` values. g: ``[B, T, H]`` log-decays ``<= 0``. beta: ``[B, T, H]``.
        initial_state: ``[B, H, K, V]``; zeros when ``None``.
        scale: read scale, ``K ** -0.5`` when ``None``.
        chunk_size: tokens per chunk, any value is exact; ``None`` = 64 when gradients flow, else 16
            (as the delta rule). Keep ``|sum of g over a chunk|`` below ~80 in float32.

    Returns:
        ``(o [B, T, H, V] in q.dtype, final_state [B, H, K, V] in the compute dtype)``.
    """
    check_comba_inputs(q, k, v, p, g, beta, initial_state, chunk_size)
    B, T, H, K = q.shape
    V = v.shape[-1]
    cdt = compute_dtype(q)
    scale = K**-0.5 if scale is None else scale
    if chunk_size is None:
        chunk_size = auto_chunk_size(q, k, v, p, g, beta, initial_state)
    C = min(chunk_size, T)
    N = -(-T // C)
    TP = N * C
    qc = heads_first(q, TP, cdt).view(B, H, N, C, K) * scale
    kc = heads_first(k, TP, cdt).view(B, H, N, C, K)
    pc = heads_first(p, TP, cdt).view(B, H, N, C, K)
    vc = heads_first(v, TP, cdt).view(B, H, N, C, V)
    bc = heads_first(beta, TP, cdt).view(B, H, N, C, 1)
    G = heads_first(g, TP, cdt).view(B, H, N, C).cumsum(-1)
    tril = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    strict = tril.tril(-1)
    # mask before exp: the upper triangle would overflow (gamma_t / gamma_s > 1 for s > t)
    decay = (G[..., :, None] - G[..., None, :]).masked_fill(~tril, float("-inf")).exp()
    kT = kc.transpose(-1, -2)
    A = ((pc * bc) @ kT * decay).masked_fill(~strict, 0.0)  # beta_t gamma_t/gamma_s p_t . k_s
    P = (qc @ kT * decay).masked_fill(~tril, 0.0)
    gamma = G.exp()[..., None]
    k_end = kc * (G[..., -1:] - G).exp()[..., None]
    chunk_decay = G[..., -1].exp()[..., None, None]
    eye = torch.eye(C, dtype=cdt, device=q.device)
    Tinv = torch.linalg.solve_triangular(
        A + eye, eye.expand(B, H, N, C, C), upper=False, unitriangular=True
    )
    Wv = Tinv @ (vc * bc)
    Wp = Tinv @ (pc * bc * gamma)
    qg = qc * gamma
    S = matrix_state(initial_state, (B, H, K, V), cdt, q)
    Wvs, Wps, Ps, qgs, kes, cds = (per_chunk(x, N) for x in (Wv, Wp, P, qg, k_end.mT, chunk_decay))
    S = S.reshape(B * H, K, V)
    outs = []
    for n in range(N):
        U = torch.baddbmm(Wvs[n], Wps[n], S, alpha=-1.0)
        outs.append(torch.baddbmm(Ps[n] @ U, qgs[n], S))
        S = torch.baddbmm(cds[n] * S, kes[n], U)
    O = torch.stack(outs, dim=1).view(B, H, TP, V)[:, :, :T].transpose(1, 2)
    return O.to(q.dtype), S.view(B, H, K, V)
