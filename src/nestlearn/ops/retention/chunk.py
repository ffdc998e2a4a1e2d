"""Chunkwise retention (RetNet's chunkwise recurrent form, Sun et al. 2023 eq. 7), pure PyTorch.

Inner math in float32 (float64 for float64 inputs); ``o`` is cast back to ``q.dtype`` and the final
state stays in the compute dtype.

Contract: **exact at any chunk size**, for outputs, final state and the gradients of every input
(``q``, ``k``, ``v``, ``gamma`` and ``initial_state``): retention is linear in its state. A length
that is not a multiple of the chunk size is padded with inert tokens (``k = v = 0`` and no decay),
so the final state is the state after the last real token.

Per chunk of ``C`` tokens starting from state ``S0``, with in-chunk positions ``t = 1..C``:

    O     = scale * (gamma^t * Q) S0 + scale * (Q K^T * D) V,    D_ts = gamma^(t-s) (s <= t)
    S_C   = gamma^C S0 + (gamma^(C-s) * K)^T V

Decay-masked intra-chunk attention for all chunks at once; the inter-chunk state is a scalar-gated
scan over chunks (one multiply-add of a ``[K, V]`` matrix per chunk), and the reads of the
chunk-start states are one batched matmul after it.

Axis legend: B batch, T tokens, H heads, N chunks, C tokens per chunk, K key dim, V value dim.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nestlearn.ops.common import heads_first, matrix_state
from nestlearn.ops.retention.common import check_retention_inputs, compute_dtype

__all__ = ["chunk_retention"]


def chunk_retention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gamma: Tensor,
    initial_state: Tensor | None = None,
    *,
    scale: float | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Multi-scale retention, chunk-parallel; equals :func:`naive_recurrent_retention` exactly.

    Args:
        q: ``[B, T, H, K]`` queries (already rotated by the layer's xPos/RoPE).
        k: ``[B, T, H, K]`` keys (already rotated).
        v: ``[B, T, H, V]`` values.
        gamma: ``[H]`` per-head decays in ``(0, 1]`` (RetNet: ``1 - 2^(-5-h)``).
        initial_state: ``[B, H, K, V]`` state before the first token; zeros when ``None``.
        scale: read scale; ``K ** -0.5`` when ``None``.
        chunk_size: tokens per chunk ``C``; any value gives the same result. ``None`` picks the
            fastest on CPU (``benchmarks/bench_linear_ops.py``): 64 when gradients flow, else 32.

    Returns:
        ``(o, final_state)``: ``o: [B, T, H, V]`` in ``q.dtype``; ``final_state: [B, H, K, V]`` in
        the compute dtype.

    Example::

        >>> B, T, H, K, V = 2, 100, 4, 16, 32
        >>> q, k, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)
        >>> gamma = 1 - 2.0 ** (-5.0 - torch.arange(H))
        >>> o, S = chunk_retention(q, k, v, gamma, chunk_size=32)
        >>> o.shape, S.shape
        (torch.Size([2, 100, 4, 32]), torch.Size([2, 4, 16, 32]))
    """
    check_retention_inputs(q, k, v, gamma, initial_state, chunk_size)
    B, T, H, K = q.shape
    V = v.shape[-1]
    cdt = compute_dtype(q)
    scale = K**-0.5 if scale is None else scale
    if chunk_size is None:  # fastest on CPU (benchmarks/bench_linear_ops.py); any value is exact
        grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (q, k, v, gamma, initial_state)
        )
        chunk_size = 64 if grad else 32
    C = min(chunk_size, T)
    N = -(-T // C)
    TP = N * C
    qc = heads_first(q, TP, cdt).view(B, H, N, C, K) * scale
    kc = heads_first(k, TP, cdt).view(B, H, N, C, K)
    vc = heads_first(v, TP, cdt).view(B, H, N, C, V)
    # per-token log-decay, 0 on padding so inert tokens do not decay the final state
    real = torch.arange(TP, device=q.device) < T
    g = gamma.to(cdt).log()[:, None] * real.to(cdt)[None, :]  # [H, TP]
    G = g.view(H, N, C).cumsum(-1)  # [H, N, C] log gamma^t inside each chunk
    tril = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    decay = (G[..., :, None] - G[..., None, :]).masked_fill(~tril, float("-inf")).exp()
    P = (qc @ kc.transpose(-1, -2)) * decay  # [B, H, N, C, C] decay-masked q_t . k_s
    O = P @ vc  # [B, H, N, C, V] intra-chunk part
    q_in = qc * G.exp()[..., None]  # gamma^t q_t reads the chunk-start state
    k_end = kc * (G[..., -1:] - G).exp()[..., None]  # gamma^(C-s) k_s
    dS = k_end.transpose(-1, -2) @ vc  # [B, H, N, K, V] what each chunk writes
    chunk_decay = G[..., -1].exp()[:, :, None, None]  # [H, N, 1, 1]

    S = matrix_state(initial_state, (B, H, K, V), cdt, q)
    G3 = B * H

    def bh(x: Tensor) -> Tensor:  # merge (B, H) into one bmm batch, no copy (heads-first)
        return x.reshape(G3, *x.shape[2:])

    outs = []
    for n in range(N):  # scalar-gated scan over chunks; each chunk reads its start state
        outs.append(torch.baddbmm(bh(O[:, :, n]), bh(q_in[:, :, n]), S.view(G3, K, V)))
        S = torch.addcmul(dS[:, :, n], chunk_decay[:, n], S)  # gamma^C S + dS
    o = torch.stack(outs, dim=1).view(B, H, TP, V)[:, :, :T].transpose(1, 2)
    return o.to(q.dtype), S
