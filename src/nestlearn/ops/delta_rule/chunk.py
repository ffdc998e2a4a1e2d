"""Chunk-parallel delta rule and gated delta rule (WY representation / UT transform), pure PyTorch.

Inner math in float32 (float64 for float64 inputs); ``o`` is cast back to ``q.dtype`` and the final
state stays in the compute dtype.

Contract: **exact at any chunk size.** The delta rule is linear in its state, so grouping tokens
into chunks changes only the order of floating-point operations: ``chunk_delta_rule`` equals
``naive_recurrent_delta_rule`` (and the gated pair likewise) for every ``chunk_size``, for outputs,
final state and the gradients of every input, including ``initial_state``, ``beta`` and ``g``. A
length that is not a multiple of the chunk size is padded with inert tokens (``k = v = beta = 0``,
``g = 0``), which leave the state untouched.

Per chunk of ``C`` tokens starting from state ``S0`` (derivation in ``README.md``), with
``gamma_t = exp(sum_{j<=t} g_j)`` inside the chunk (``gamma = 1`` for the plain rule):

    A_ts  = beta_t (gamma_t / gamma_s) k_t . k_s           (s < t, strictly lower)
    W_v   = (I + A)^-1 diag(beta) V                        (UT transform: one triangular solve)
    W_k   = (I + A)^-1 diag(beta gamma) K                  (WY representation of the products)
    U     = W_v - W_k S0                                   (the "new values" beta_t (v_t - S^T k_t))
    O     = diag(gamma) Q S0 + (M * Q K^T) U,  M_ts = gamma_t / gamma_s (s <= t)
    S_C   = gamma_C S0 + (K * gamma_C / gamma)^T U

Everything that does not involve ``S0`` is computed for all chunks at once in a few batched ops.
Substituting ``U`` makes the chunk step an affine map of the state,
``S_C = (gamma_C I - K_end^T W_k) S0 + K_end^T W_v``, so the only sequential work is one
``[K, K] @ [K, V]`` matmul per chunk; the reads ``O = (gamma Q - P W_k) S0 + P W_v`` are then one
batched matmul over the stacked chunk-start states.

Axis legend: B batch, T tokens, H heads, N chunks, C tokens per chunk, K key dim, V value dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nestlearn.ops.delta_rule.common import check_delta_inputs, compute_dtype

__all__ = ["chunk_delta_rule", "chunk_gated_delta_rule"]


def _blocks(x: Tensor, C: int, pad: int, dtype: torch.dtype) -> Tensor:
    """``[B, T, H, *rest]`` -> ``[B, H, N, C, *rest]`` in ``dtype``, zero-padded along T."""
    x = x.to(dtype)
    if pad:
        x = F.pad(x, (0, 0) * (x.ndim - 2) + (0, pad))
    B, TP, H = x.shape[:3]
    return x.reshape(B, TP // C, C, H, *x.shape[3:]).movedim(3, 1)


def _chunk(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    g: Tensor | None,
    initial_state: Tensor | None,
    scale: float | None,
    chunk_size: int,
) -> tuple[Tensor, Tensor]:
    B, T, H, K = q.shape
    V = v.shape[-1]
    cdt = compute_dtype(q)
    scale = K**-0.5 if scale is None else scale
    C = min(chunk_size, T)  # a shorter chunk is just as exact and wastes no padding
    N = -(-T // C)
    pad = N * C - T
    qc = _blocks(q, C, pad, cdt) * scale  # [B, H, N, C, K]
    kc = _blocks(k, C, pad, cdt)
    vc = _blocks(v, C, pad, cdt)  # [B, H, N, C, V]
    bc = _blocks(beta, C, pad, cdt)[..., None]  # [B, H, N, C, 1]
    tril = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    strict = tril.tril(-1)

    kb = kc * bc
    A = kb @ kc.transpose(-1, -2)  # [B, H, N, C, C]: beta_t k_t . k_s
    P = qc @ kc.transpose(-1, -2)  # [B, H, N, C, C]: q_t . k_s
    if g is not None:
        G = _blocks(g, C, pad, cdt).cumsum(-1)  # [B, H, N, C] log gamma_t
        # mask before exp: the upper triangle would overflow (gamma_t / gamma_s > 1 for s > t)
        decay = (G[..., :, None] - G[..., None, :]).masked_fill(~tril, float("-inf")).exp()
        A = A * decay
        P = P * decay
        gamma = G.exp()[..., None]  # [B, H, N, C, 1]
        k_end = kc * (G[..., -1:] - G).exp()[..., None]  # k_s gamma_C / gamma_s
        chunk_decay = G[..., -1].exp()[..., None, None]  # [B, H, N, 1, 1]
        rhs_k = kb * gamma
    else:
        gamma, k_end, chunk_decay, rhs_k = None, kc, None, kb
    A = A.masked_fill(~strict, 0.0)
    P = P.masked_fill(~tril, 0.0)
    eye_c = torch.eye(C, dtype=cdt, device=q.device)
    # UT transform: one unit-lower-triangular solve gives both W_v and W_k
    sol = torch.linalg.solve_triangular(
        A + eye_c, torch.cat([vc * bc, rhs_k], dim=-1), upper=False, unitriangular=True
    )
    Wv, Wk = sol.split([V, K], dim=-1)  # [B, H, N, C, V], [B, H, N, C, K]

    kt = k_end.transpose(-1, -2)  # [B, H, N, K, C]
    eye_k = torch.eye(K, dtype=cdt, device=q.device)
    M = (eye_k if chunk_decay is None else chunk_decay * eye_k) - kt @ Wk  # [B, H, N, K, K]
    D = kt @ Wv  # [B, H, N, K, V]
    Qs = (qc if gamma is None else qc * gamma) - P @ Wk  # [B, H, N, C, K]
    Ob = P @ Wv  # [B, H, N, C, V]

    if initial_state is None:
        S = torch.zeros(B, H, K, V, dtype=cdt, device=q.device)
    else:
        S = initial_state.to(cdt)
    starts = []
    for n in range(N):  # the only sequential part: one [K, K] @ [K, V] per chunk
        starts.append(S)
        S = torch.baddbmm(
            D[:, :, n].reshape(B * H, K, V), M[:, :, n].reshape(B * H, K, K), S.reshape(B * H, K, V)
        ).view(B, H, K, V)
    S_in = torch.stack(starts, dim=2)  # [B, H, N, K, V]
    O = Ob + Qs @ S_in  # [B, H, N, C, V]
    o = O.movedim(1, 3).reshape(B, N * C, H, V)[:, :T]
    return o.to(q.dtype), S


def chunk_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    initial_state: Tensor | None = None,
    *,
    scale: float | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Delta rule (DeltaNet), chunk-parallel; equals :func:`naive_recurrent_delta_rule` exactly.

    ``S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``, ``o_t = scale * S_t^T q_t``.

    Args:
        q: ``[B, T, H, K]`` queries.
        k: ``[B, T, H, K]`` keys (stable when ``beta_t ||k_t||^2 <= 2``; layers L2-normalise them).
        v: ``[B, T, H, V]`` values.
        beta: ``[B, T, H]`` write strengths.
        initial_state: ``[B, H, K, V]`` memory before the first token; zeros when ``None``.
        scale: read scale; ``K ** -0.5`` when ``None``.
        chunk_size: tokens per chunk ``C`` (any value gives the same result; 64 is fast on CPU).

    Returns:
        ``(o, final_state)``: ``o: [B, T, H, V]`` in ``q.dtype``; ``final_state: [B, H, K, V]`` in
        the compute dtype, ready to be passed as the next call's ``initial_state``.

    Example::

        >>> B, T, H, K, V = 2, 100, 4, 16, 32
        >>> q, k = (F.normalize(torch.randn(B, T, H, K), dim=-1) for _ in range(2))
        >>> v, beta = torch.randn(B, T, H, V), torch.rand(B, T, H)
        >>> o, S = chunk_delta_rule(q, k, v, beta, chunk_size=32)
        >>> o.shape, S.shape
        (torch.Size([2, 100, 4, 32]), torch.Size([2, 4, 16, 32]))
    """
    check_delta_inputs(q, k, v, beta, None, initial_state, chunk_size)
    return _chunk(q, k, v, beta, None, initial_state, scale, chunk_size)


def chunk_gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    initial_state: Tensor | None = None,
    *,
    scale: float | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Gated delta rule (Gated DeltaNet), chunk-parallel; equals the naive loop exactly.

    ``S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``, ``o_t = scale S_t^T q_t``.

    Args:
        q, k, v, beta, initial_state, scale, chunk_size: as in :func:`chunk_delta_rule`.
        g: ``[B, T, H]`` log-decays ``g_t <= 0``. Decay ratios are formed as
            ``exp(G_t - G_s)`` of cumulative sums inside one chunk only, so they never overflow;
            keep ``|sum of g over a chunk|`` below ~80 in float32 (it is ~1 for trained models).

    Returns:
        ``(o [B, T, H, V], final_state [B, H, K, V])`` as in :func:`chunk_delta_rule`.
    """
    check_delta_inputs(q, k, v, beta, g, initial_state, chunk_size)
    return _chunk(q, k, v, beta, g, initial_state, scale, chunk_size)
