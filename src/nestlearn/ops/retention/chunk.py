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
import torch.nn.functional as F
from torch import Tensor

from nestlearn.ops.retention.common import check_retention_inputs, compute_dtype

__all__ = ["chunk_retention"]


def _blocks(x: Tensor, C: int, pad: int, dtype: torch.dtype) -> Tensor:
    """``[B, T, H, *rest]`` -> ``[B, H, N, C, *rest]`` in ``dtype``, zero-padded along T."""
    x = x.to(dtype)
    if pad:
        x = F.pad(x, (0, 0) * (x.ndim - 2) + (0, pad))
    B, TP, H = x.shape[:3]
    return x.reshape(B, TP // C, C, H, *x.shape[3:]).movedim(3, 1)


def chunk_retention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gamma: Tensor,
    initial_state: Tensor | None = None,
    *,
    scale: float | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Multi-scale retention, chunk-parallel; equals :func:`naive_recurrent_retention` exactly.

    Args:
        q: ``[B, T, H, K]`` queries (already rotated by the layer's xPos/RoPE).
        k: ``[B, T, H, K]`` keys (already rotated).
        v: ``[B, T, H, V]`` values.
        gamma: ``[H]`` per-head decays in ``(0, 1]`` (RetNet: ``1 - 2^(-5-h)``).
        initial_state: ``[B, H, K, V]`` state before the first token; zeros when ``None``.
        scale: read scale; ``K ** -0.5`` when ``None``.
        chunk_size: tokens per chunk ``C`` (any value gives the same result; 64 is fast on CPU).

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
    C = min(chunk_size, T)
    N = -(-T // C)
    pad = N * C - T
    qc = _blocks(q, C, pad, cdt) * scale  # [B, H, N, C, K]
    kc = _blocks(k, C, pad, cdt)
    vc = _blocks(v, C, pad, cdt)  # [B, H, N, C, V]
    # per-token log-decay, 0 on padding so inert tokens do not decay the final state
    real = torch.arange(N * C, device=q.device) < T
    g = real.to(cdt)[:, None] * gamma.to(cdt).log()[None, :]  # [N*C, H]
    G = g.T.reshape(H, N, C).cumsum(-1)  # [H, N, C] log gamma^t inside each chunk
    tril = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    decay = (G[..., :, None] - G[..., None, :]).masked_fill(~tril, float("-inf")).exp()
    P = (qc @ kc.transpose(-1, -2)) * decay  # [B, H, N, C, C] decay-masked q_t . k_s
    O = P @ vc  # intra-chunk part
    q_in = qc * G.exp()[..., None]  # gamma^t q_t reads the chunk-start state
    k_end = kc * (G[..., -1:] - G).exp()[..., None]  # gamma^(C-s) k_s
    dS = k_end.transpose(-1, -2) @ vc  # [B, H, N, K, V] what each chunk writes
    chunk_decay = G[..., -1].exp()  # [H, N]

    if initial_state is None:
        S = torch.zeros(B, H, K, V, dtype=cdt, device=q.device)
    else:
        S = initial_state.to(cdt)
    starts = []
    for n in range(N):  # scalar-gated scan over chunks
        starts.append(S)
        S = chunk_decay[:, n, None, None] * S + dS[:, :, n]
    O = O + q_in @ torch.stack(starts, dim=2)  # [B, H, N, C, V]
    o = O.movedim(1, 3).reshape(B, N * C, H, V)[:, :T]
    return o.to(q.dtype), S
