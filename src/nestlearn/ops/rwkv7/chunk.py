"""Chunk-parallel DPLR delta rule (RWKV-7), pure PyTorch; exact at any chunk size.

Inner math in float32 (float64 for float64 inputs); ``o`` is cast back to ``r.dtype`` and the final
state stays in the compute dtype.

Contract: equals :func:`~nestlearn.ops.rwkv7.naive.naive_recurrent_rwkv7` for every chunk size, for
outputs, final state and the gradients of every input (the recurrence is linear in its state, so
chunking only reorders floating-point operations). Lengths that are not a multiple of the chunk
size are padded with inert tokens (``w = 0``, ``a = b = k = v = r = 0``: the state is unchanged).

Per chunk of ``C`` tokens from state ``S0``, with the chunk-local cumulative log-decay
``G_t = sum_{j<=t} w_j`` (per key channel) and ``u_t = a_t^T S_{t-1}`` (derivation in ``README.md``):

    a~_t = a_t e^{G_{t-1}},  r~_t = r_t e^{G_t},  b~_s = b_s e^{-G_s},  k~_s = k_s e^{-G_s}
    (I - tril_<(A~ B~^T)) U = A~ S0 + tril_<(A~ K~^T) V          one unit-triangular solve
    O   = scale [R~ S0 + tril_<=(R~ B~^T) U + tril_<=(R~ K~^T) V]
    S_C = e^{G_C} S0 + (B e^{G_C - G})^T U + (K e^{G_C - G})^T V

Everything except the terms with ``S0`` is batched over all chunks; the loop runs four small
matmuls per chunk. ``e^{-G_s}`` grows inside a chunk: keep ``|sum of w over a chunk|`` below ~80
in float32 (the RWKV-7 layer bounds ``w >= -0.607``, i.e. 39 at ``C = 64``).

Axis legend: B batch, T tokens, H heads, N chunks, C tokens per chunk, K key dim, V value dim,
G = B * H.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nestlearn.ops.common import heads_first, matrix_state, per_chunk
from nestlearn.ops.rwkv7.common import check_dplr_inputs, compute_dtype

__all__ = ["chunk_rwkv7"]

DEFAULT_CHUNK = 32
"""Default chunk size: the fastest forward+backward at T=2048 on the project's CPU
(``benchmarks/bench_new_baselines.py``); any value gives the same result."""


def chunk_rwkv7(
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
    """DPLR delta rule ``S_t = diag(e^{w_t}) S_{t-1} + b_t a_t^T S_{t-1} + k_t v_t^T``, chunked.

    Args:
        r: ``[B, T, H, K]`` receptance (query); ``o_t = scale * S_t^T r_t``.
        w: ``[B, T, H, K]`` per-channel log-decays ``w <= 0``.
        k: ``[B, T, H, K]`` keys. v: ``[B, T, H, V]`` values.
        a, b: ``[B, T, H, K]`` low-rank transition factors (RWKV-7: ``a = -kappa``,
            ``b = kappa * alpha``).
        initial_state: ``[B, H, K, V]``; zeros when ``None``.
        scale: read scale.
        chunk_size: tokens per chunk; ``None`` = :data:`DEFAULT_CHUNK`. Any value is exact.

    Returns:
        ``(o [B, T, H, V] in r.dtype, final_state [B, H, K, V] in the compute dtype)``.

    Example::

        >>> B, T, H, K = 2, 100, 4, 16
        >>> r, k = torch.randn(B, T, H, K), F.normalize(torch.randn(B, T, H, K), dim=-1)
        >>> kap = F.normalize(torch.randn(B, T, H, K), dim=-1)
        >>> w = -0.5 * torch.rand(B, T, H, K)
        >>> o, S = chunk_rwkv7(r, w, k, torch.randn(B, T, H, K), -kap, kap * 0.5)
        >>> o.shape, S.shape
        (torch.Size([2, 100, 4, 16]), torch.Size([2, 4, 16, 16]))
    """
    check_dplr_inputs(r, w, k, v, a, b, initial_state, chunk_size)
    B, T, H, K = r.shape
    V = v.shape[-1]
    cdt = compute_dtype(r)
    C = min(chunk_size or DEFAULT_CHUNK, T)
    N = -(-T // C)
    TP = N * C
    rc, wc, kc, ac, bc = (heads_first(x, TP, cdt).view(B, H, N, C, K) for x in (r, w, k, a, b))
    vc = heads_first(v, TP, cdt).view(B, H, N, C, V)
    if scale != 1.0:
        rc = rc * scale
    G = wc.cumsum(-2)  # [B, H, N, C, K]: log decay from the chunk start through token t
    GC = G[..., -1:, :]  # [B, H, N, 1, K]
    a_t = ac * (G - wc).exp()  # a_t e^{G_{t-1}}
    r_t = rc * G.exp()
    eneg = (-G).exp()
    b_t, k_t = bc * eneg, kc * eneg
    dec_end = (GC - G).exp()  # e^{G_C - G_s} <= 1
    b_end, k_end = bc * dec_end, kc * dec_end

    tril = torch.ones(C, C, dtype=torch.bool, device=r.device).tril()
    strict = tril.tril(-1)
    A_ab = (a_t @ b_t.mT).masked_fill(~strict, 0.0)  # [B, H, N, C, C]
    A_ak = (a_t @ k_t.mT).masked_fill(~strict, 0.0)
    P_b = (r_t @ b_t.mT).masked_fill(~tril, 0.0)
    P_k = (r_t @ k_t.mT).masked_fill(~tril, 0.0)
    eye = torch.eye(C, dtype=cdt, device=r.device)
    Tinv = torch.linalg.solve_triangular(
        eye - A_ab, eye.expand(B, H, N, C, C), upper=False, unitriangular=True
    )
    Wa = Tinv @ a_t  # U = Wa S0 + Uv
    Uv = Tinv @ (A_ak @ vc)
    Okv = P_k @ vc  # the reads' direct k v^T part
    KVend = k_end.mT @ vc  # [B, H, N, K, V]
    decC = GC.exp().mT  # [B, H, N, K, 1]

    S = matrix_state(initial_state, (B, H, K, V), cdt, r)
    Was, Uvs, Oks, rts, Pbs, bes, KVs, dcs = (
        per_chunk(x, N) for x in (Wa, Uv, Okv, r_t, P_b, b_end, KVend, decC)
    )
    S = S.reshape(B * H, K, V)
    outs = []
    for n in range(N):  # the sequential part: four small matmuls per chunk
        U = torch.baddbmm(Uvs[n], Was[n], S)  # [G, C, V]: u_t = a_t^T S_{t-1}
        outs.append(torch.baddbmm(torch.baddbmm(Oks[n], rts[n], S), Pbs[n], U))
        S = torch.baddbmm(torch.addcmul(KVs[n], dcs[n], S), bes[n].mT, U)
    O = torch.stack(outs, dim=1).view(B, H, TP, V)[:, :, :T].transpose(1, 2)
    return O.to(r.dtype), S.view(B, H, K, V)
