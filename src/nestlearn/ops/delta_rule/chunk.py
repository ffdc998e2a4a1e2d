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

Everything that does not involve ``S0`` (``A``, the masked ``Q K^T``, ``(I + A)^-1`` by one
triangular solve against the identity, ``W_v``, ``W_k``) is computed for all chunks at once in a
few batched ops, on a heads-first copy of the inputs so every chunk is a strided ``bmm`` batch. The
sequential loop then does three small matmuls per chunk: ``U = W_v - W_k S0``, the reads
``O = gamma Q S0 + P U`` and the state step ``S_C = gamma_C S0 + K_end^T U``. Per token this is the
same ``3 K V`` multiply-adds as the recurrence, done as matrix products instead of memory-bound
vector updates; that, not fewer FLOPs, is where the speed comes from.

Axis legend: B batch, T tokens, H heads, N chunks, C tokens per chunk, K key dim, V value dim.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nestlearn.ops.common import heads_first, matrix_state
from nestlearn.ops.delta_rule.common import check_delta_inputs, compute_dtype

__all__ = ["chunk_delta_rule", "chunk_gated_delta_rule"]


def auto_chunk_size(*tensors: Tensor | None) -> int:
    """64 when gradients will flow, else 16 (any value is exact; these are the fastest on CPU).

    The forward pass does ``3 K V`` multiply-adds per token in the chunk loop whatever ``C`` is,
    plus ``O(C (K + V))`` in the batched intra-chunk part, so small chunks are cheapest for
    inference; backward pays per chunk in autograd bookkeeping, so training prefers fewer, larger
    chunks (``benchmarks/bench_linear_ops.py``).
    """
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    return 64 if grad else 16


def _chunk(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    g: Tensor | None,
    initial_state: Tensor | None,
    scale: float | None,
    chunk_size: int | None,
) -> tuple[Tensor, Tensor]:
    B, T, H, K = q.shape
    V = v.shape[-1]
    cdt = compute_dtype(q)
    scale = K**-0.5 if scale is None else scale
    if chunk_size is None:
        chunk_size = auto_chunk_size(q, k, v, beta, g, initial_state)
    C = min(chunk_size, T)  # a shorter chunk is just as exact and wastes no padding
    N = -(-T // C)
    TP = N * C
    qc = heads_first(q, TP, cdt).view(B, H, N, C, K) * scale
    kc = heads_first(k, TP, cdt).view(B, H, N, C, K)
    vc = heads_first(v, TP, cdt).view(B, H, N, C, V)
    bc = heads_first(beta, TP, cdt).view(B, H, N, C, 1)
    tril = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    strict = tril.tril(-1)

    kb = kc * bc
    kT = kc.transpose(-1, -2)
    A = kb @ kT  # [B, H, N, C, C]: beta_t k_t . k_s
    P = qc @ kT  # [B, H, N, C, C]: q_t . k_s
    if g is not None:
        G = heads_first(g, TP, cdt).view(B, H, N, C).cumsum(-1)  # log gamma_t in each chunk
        # mask before exp: the upper triangle would overflow (gamma_t / gamma_s > 1 for s > t)
        decay = (G[..., :, None] - G[..., None, :]).masked_fill(~tril, float("-inf")).exp()
        A = A * decay
        P = P * decay
        gamma = G.exp()[..., None]  # [B, H, N, C, 1]
        k_end = kc * (G[..., -1:] - G).exp()[..., None]  # k_s gamma_C / gamma_s
        chunk_decay = G[..., -1].exp()[..., None, None]  # [B, H, N, 1, 1]
        qg, rhs_k = qc * gamma, kb * gamma
    else:
        k_end, chunk_decay, qg, rhs_k = kc, None, qc, kb
    A = A.masked_fill(~strict, 0.0)
    P = P.masked_fill(~tril, 0.0)
    eye = torch.eye(C, dtype=cdt, device=q.device)
    # UT transform: (I + A)^-1 by one unit-triangular solve against I (C columns), then two
    # GEMMs; cheaper on CPU than solving against the K + V columns of [beta V | beta gamma K]
    Tinv = torch.linalg.solve_triangular(
        A + eye, eye.expand(B, H, N, C, C), upper=False, unitriangular=True
    )
    Wv = Tinv @ (vc * bc)  # [B, H, N, C, V]
    Wk = Tinv @ rhs_k  # [B, H, N, C, K]
    kt_end = k_end.transpose(-1, -2)  # [B, H, N, K, C]

    S = matrix_state(initial_state, (B, H, K, V), cdt, q)
    G3 = B * H  # (B, H) merge into one bmm batch without copies: every tensor is heads-first

    def bh(x: Tensor) -> Tensor:
        return x.reshape(G3, *x.shape[2:])

    S = bh(S)  # [G, K, V]
    outs = []
    for n in range(N):  # the sequential part: three small fused matmuls per chunk
        # new values U = beta_t (v_t - S^T k_t) in WY form: W_v - W_k S
        U = torch.baddbmm(bh(Wv[:, :, n]), bh(Wk[:, :, n]), S, alpha=-1.0)  # [G, C, V]
        outs.append(torch.baddbmm(bh(P[:, :, n]) @ U, bh(qg[:, :, n]), S))  # gamma Q S + P U
        decayed = S if chunk_decay is None else bh(chunk_decay[:, :, n]) * S
        S = torch.baddbmm(decayed, bh(kt_end[:, :, n]), U)  # gamma_C S + K_end^T U
    O = torch.stack(outs, dim=1).view(B, H, TP, V)[:, :, :T].transpose(1, 2)
    return O.to(q.dtype), S.view(B, H, K, V)


def chunk_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    initial_state: Tensor | None = None,
    *,
    scale: float | None = None,
    chunk_size: int | None = None,
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
        chunk_size: tokens per chunk ``C``; any value gives the same result. ``None`` picks the
            fastest on CPU: 64 when gradients flow, 16 otherwise (:func:`auto_chunk_size`).

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
    chunk_size: int | None = None,
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
