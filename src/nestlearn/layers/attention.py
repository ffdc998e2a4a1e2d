"""Causal softmax attention (the Transformer++ mixer, and Hope-Attention's mixer).

Axis legend: B batch, T new tokens, S cached + new tokens, H query heads, G key/value heads,
D head dim. Signature shared by every mixer: ``forward(x, *, state=None) -> (y, state)``.

In the Nested Learning view (arXiv 2512.24695, eq. 62) softmax attention is the
non-parametric solution of a weighted l2 regression over the whole context: a memory of
update frequency infinity. Its per-sequence state is therefore the KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nestlearn.layers.norm import RMSNorm
from nestlearn.layers.rope import apply_rope, rope_cos_sin, rope_frequencies
from nestlearn.utils.residual import mark_residual_out


@dataclass
class KVCache:
    """Per-sequence attention state: keys and values seen so far.

    ``k, v: [B, S, G, D]``; the position of the next token is ``S`` (``length``).
    """

    k: torch.Tensor
    v: torch.Tensor
    start: int = 0
    """Absolute position of ``k[:, 0]`` (a sliding-window cache drops old tokens)."""

    @property
    def length(self) -> int:
        return self.k.shape[1]

    @property
    def position(self) -> int:
        """Absolute position of the next token."""
        return self.start + self.k.shape[1]

    def detach(self) -> KVCache:
        return KVCache(self.k.detach(), self.v.detach(), self.start)


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention with RoPE, optional grouped-query heads and QK-norm.

    Shapes: ``x: [B, T, dim] -> [B, T, dim]``. With ``state`` (a :class:`KVCache`) the new
    tokens attend to the cached ones and the returned state holds all of them, so
    prefill followed by token-by-token decoding equals one full call.
    """

    supports_naive = False
    """No reference op to switch to (``nestlearn.layers.protocol.Mixer``)."""

    def __init__(
        self,
        dim: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        *,
        rope_base: float = 10000.0,
        rope_interleaved: bool = False,
        qk_norm: bool = False,
        window: int | None = None,
        bias: bool = False,
    ) -> None:
        super().__init__()
        n_kv_heads = n_kv_heads or n_heads
        if dim % n_heads:
            raise ValueError(f"dim={dim} must be divisible by n_heads={n_heads}")
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads={n_heads} must be a multiple of n_kv_heads={n_kv_heads}")
        self.dim, self.n_heads, self.n_kv_heads = dim, n_heads, n_kv_heads
        self.head_dim = dim // n_heads
        self.rope_base, self.rope_interleaved = rope_base, rope_interleaved
        self.window = window
        self.wq = nn.Linear(dim, n_heads * self.head_dim, bias=bias)
        self.wk = nn.Linear(dim, n_kv_heads * self.head_dim, bias=bias)
        self.wv = nn.Linear(dim, n_kv_heads * self.head_dim, bias=bias)
        self.wo = mark_residual_out(nn.Linear(n_heads * self.head_dim, dim, bias=bias))
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else None
        self.register_buffer(
            "inv_freq", rope_frequencies(self.head_dim, rope_base), persistent=False
        )

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        """An empty KV cache for ``batch_size`` sequences."""
        empty = torch.zeros(
            batch_size, 0, self.n_kv_heads, self.head_dim, device=device, dtype=dtype
        )
        return KVCache(empty, empty.clone())

    def reset_buffers(self) -> None:
        """Recompute non-persistent buffers (needed after building on the meta device)."""
        self.inv_freq = rope_frequencies(
            self.head_dim, self.rope_base, device=self.wq.weight.device
        )

    def forward(
        self, x: torch.Tensor, *, state: KVCache | None = None
    ) -> tuple[torch.Tensor, KVCache | None]:
        B, T, _ = x.shape
        past = state.position if state is not None else 0
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        pos = torch.arange(past, past + T, device=x.device)
        cos, sin = rope_cos_sin(pos, self.inv_freq)
        q = apply_rope(q, cos, sin, self.rope_interleaved)
        k = apply_rope(k, cos, sin, self.rope_interleaved)
        new_state = None
        if state is not None:
            k = torch.cat([state.k, k], dim=1)  # [B, S, G, D]
            v = torch.cat([state.v, v], dim=1)
            start = state.start
            if self.window is not None and k.shape[1] > self.window + T - 1:
                # keep only what this call's queries can see; positions stay absolute
                drop = k.shape[1] - (self.window + T - 1)
                k, v, start = k[:, drop:], v[:, drop:], start + drop
            new_state = KVCache(k, v, start)
        out = self._attend(q, k, v, past_in_kv=k.shape[1] - T)
        y = self.wo(out.reshape(B, T, self.n_heads * self.head_dim))
        return y, new_state

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past_in_kv: int
    ) -> torch.Tensor:
        """``q: [B, T, H, D]``, ``k, v: [B, S, G, D]`` -> ``[B, T, H, D]``."""
        T, S = q.shape[1], k.shape[1]
        qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        gqa = self.n_heads != self.n_kv_heads
        if self.window is None and past_in_kv == 0:
            o = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, enable_gqa=gqa)
        elif self.window is None and T == 1:
            o = F.scaled_dot_product_attention(qh, kh, vh, enable_gqa=gqa)
        else:
            qpos = torch.arange(past_in_kv, past_in_kv + T, device=q.device)[:, None]
            kpos = torch.arange(S, device=q.device)[None, :]
            mask = kpos <= qpos
            if self.window is not None:
                mask = mask & (kpos > qpos - self.window)
            o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, enable_gqa=gqa)
        return o.transpose(1, 2)

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per token: projections plus causal attention (average context)."""
        proj = 2 * self.dim * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
        ctx = seq_len if self.window is None else min(seq_len, self.window)
        attn = 2 * 2 * self.n_heads * self.head_dim * ctx // 2  # QK^T and AV, causal half
        return proj + attn
