"""Softmax attention with learned persistent-memory tokens (Titans arXiv 2501.00663, §3.3, eq. 19).

Axis legend: B batch, T new tokens, S cached + new tokens, N persistent tokens, H query heads,
G key/value heads, D head dim.

:class:`PersistentAttention` is :class:`~nestlearn.layers.attention.CausalSelfAttention` (same
projections, RoPE, grouped heads, optional sliding window and absolute-position KV cache) whose keys
and values start with ``N`` learned, input-independent tokens ``P = [p_1 .. p_N]``, projected by the
same ``W_k, W_v`` as the sequence. Every query sees all of them, whatever the window (Titans' "SW-Attn
with prefix", Fig. 3b). Two entry points:

* :meth:`PersistentAttention.heads` (and ``forward = W_o(heads)``): causal or sliding-window attention
  over ``[P || x]`` with a :class:`~nestlearn.layers.attention.KVCache` (Titans MAG and MAL).
* :meth:`PersistentAttention.segment_heads`: attention of one segment over
  ``[P || h || x]`` with segment-local positions (Titans MAC, eq. 22).

Position-free persistent tokens (a choice; the Titans paper does not say how persistent tokens meet
RoPE): their keys are not rotated and they are scored against the *unrotated* query, so a query at
any position scores them the same way. Rotating them at a fixed position instead would make their
scores drift with the query's absolute position. Implemented by one SDPA call on concatenated head
dims: query ``[q_rot || q]``, sequence keys ``[k_rot || 0]``, persistent keys ``[0 || k_p]``, scale
``1/sqrt(D)``, so the dot products are exactly ``q_rot . k_rot`` and ``q . k_p``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nestlearn.layers.attention import CausalSelfAttention, KVCache
from nestlearn.layers.rope import apply_rope, rope_cos_sin

__all__ = ["PersistentAttention"]


class PersistentAttention(CausalSelfAttention):
    """Causal (optionally sliding-window) attention with ``n_persistent`` learned prefix tokens.

    Args:
        dim, n_heads, n_kv_heads, rope_base, rope_interleaved, qk_norm, window: as
            :class:`~nestlearn.layers.attention.CausalSelfAttention`.
        n_persistent: number ``N >= 0`` of persistent tokens (0: plain attention).
        init_seed: seed of the persistent tokens' init (the layer index).

    Shapes: ``x: [B, T, dim] -> [B, T, dim]``; state is a ``KVCache`` of the sequence only (the
    persistent tokens are parameters, not state).
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        *,
        n_persistent: int = 0,
        rope_base: float = 10000.0,
        rope_interleaved: bool = False,
        qk_norm: bool = False,
        window: int | None = None,
        init_seed: int = 0,
    ) -> None:
        super().__init__(
            dim,
            n_heads,
            n_kv_heads,
            rope_base=rope_base,
            rope_interleaved=rope_interleaved,
            qk_norm=qk_norm,
            window=window,
        )
        if n_persistent < 0:
            raise ValueError(f"n_persistent must be >= 0, got {n_persistent}; try 16")
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 or None, got {window}")
        self.n_persistent, self.init_seed = n_persistent, init_seed
        self.persistent = nn.Parameter(torch.empty(n_persistent, dim)) if n_persistent else None
        if self.persistent is not None and self.persistent.device.type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """``persistent ~ normal(0, 1)``: the scale of the RMS-normalised hidden states that the
        same ``W_k, W_v`` project (the model's ``init_weights`` sets the Linears). Seeded by
        ``init_seed``, so the draw does not depend on the global RNG."""
        if self.persistent is None:
            return
        gen = torch.Generator().manual_seed(0x9E57 + self.init_seed)
        self.persistent.copy_(
            torch.randn(self.persistent.shape, generator=gen, dtype=torch.float64)
        )

    # ------------------------------------------------------------ projections
    def _rope(self, t: Tensor, pos: Tensor) -> Tensor:
        cos, sin = rope_cos_sin(pos, self.inv_freq)
        return apply_rope(t, cos, sin, self.rope_interleaved)

    def _keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Unrotated ``k, v: [B, T, G, D]`` of ``x: [B, T, dim]``."""
        B, T, _ = x.shape
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)
        if self.k_norm is not None:
            k = self.k_norm(k)
        return k, v

    def _query(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)
        return self.q_norm(q) if self.q_norm is not None else q

    def _attend_prefix(
        self, q_rot: Tensor, q_raw: Tensor, k: Tensor, v: Tensor, mask: Tensor
    ) -> Tensor:
        """``q_*: [B, T, H, D]``, ``k, v: [B, S, G, D]`` (rotated keys), ``mask: [T, S]`` bool.

        Returns ``[B, T, H, D]``: softmax over the persistent tokens (always visible) and the
        masked sequence keys.
        """
        B, T = q_rot.shape[:2]
        gqa = self.n_heads != self.n_kv_heads
        if self.persistent is None:
            o = F.scaled_dot_product_attention(
                q_rot.transpose(1, 2),
                k.transpose(1, 2),
                v.transpose(1, 2),
                attn_mask=mask,
                enable_gqa=gqa,
            )
            return o.transpose(1, 2)
        N = self.n_persistent
        kp, vp = self._keys_values(self.persistent.to(q_rot.dtype).unsqueeze(0))
        kp, vp = kp.expand(B, -1, -1, -1), vp.expand(B, -1, -1, -1)  # [B, N, G, D]
        qh = torch.cat([q_rot, q_raw], dim=-1).transpose(1, 2)  # [B, H, T, 2D]
        kh = torch.cat(
            [torch.cat([torch.zeros_like(kp), kp], -1), torch.cat([k, torch.zeros_like(k)], -1)],
            dim=1,
        ).transpose(1, 2)  # [B, G, N + S, 2D]
        vh = torch.cat([vp, v], dim=1).transpose(1, 2)  # [B, G, N + S, D]
        full = torch.cat([mask.new_ones(T, N), mask], dim=-1)
        o = F.scaled_dot_product_attention(
            qh, kh, vh, attn_mask=full, scale=1.0 / math.sqrt(self.head_dim), enable_gqa=gqa
        )
        return o.transpose(1, 2)

    # ---------------------------------------------------------------- forward
    def heads(self, x: Tensor, *, state: KVCache | None = None) -> tuple[Tensor, KVCache | None]:
        """Attention over ``[P || x]`` before the output projection: ``[B, T, H * D]``.

        Causal, or sliding-window when ``window`` is set (query ``t`` sees keys ``t - window + 1
        .. t`` and every persistent token). With ``state`` the new tokens continue the cached
        sequence, as in :class:`~nestlearn.layers.attention.CausalSelfAttention`.
        """
        B, T, _ = x.shape
        past = state.position if state is not None else 0
        pos = torch.arange(past, past + T, device=x.device)
        q_raw = self._query(x)
        k, v = self._keys_values(x)
        q, k = self._rope(q_raw, pos), self._rope(k, pos)
        new_state = None
        if state is not None:
            k, v = torch.cat([state.k, k], dim=1), torch.cat([state.v, v], dim=1)
            start = state.start
            if self.window is not None and k.shape[1] > self.window + T - 1:
                drop = k.shape[1] - (self.window + T - 1)  # what no query of this call can see
                k, v, start = k[:, drop:], v[:, drop:], start + drop
            new_state = KVCache(k, v, start)
        S = k.shape[1]
        qpos = torch.arange(S - T, S, device=x.device)[:, None]
        kpos = torch.arange(S, device=x.device)[None, :]
        mask = kpos <= qpos
        if self.window is not None:
            mask = mask & (kpos > qpos - self.window)
        out = self._attend_prefix(q, q_raw, k, v, mask)
        return out.reshape(B, T, self.n_heads * self.head_dim), new_state

    def forward(self, x: Tensor, *, state: KVCache | None = None) -> tuple[Tensor, KVCache | None]:
        """``x: [B, T, dim] -> [B, T, dim]``: :meth:`heads` followed by ``W_o``."""
        out, new_state = self.heads(x, state=state)
        return self.wo(out), new_state

    def segment_heads(
        self,
        x: Tensor,
        h: Tensor,
        cache: tuple[KVCache, KVCache] | None = None,
    ) -> tuple[Tensor, tuple[KVCache, KVCache]]:
        """Titans MAC attention (eqs. 22-23) for (the next part of) one segment.

        Args:
            x: ``[B, n, dim]`` the segment's next ``n`` tokens.
            h: ``[B, n, dim]`` their long-term-memory retrievals ``h_j = M*_{s-1}(q_j)``.
            cache: keys/values of the segment's earlier tokens (retrievals, tokens), or ``None``
                at the start of a segment.

        Token ``j`` of the segment (local position ``j``) attends to every persistent token, to
        ``h_0 .. h_j`` and to ``x_0 .. x_j``; ``h_j`` and ``x_j`` are both rotated at position
        ``j``. Returns the heads ``[B, n, H * D]`` (before ``W_o``) and the extended cache.
        """
        B, n, _ = x.shape
        off = cache[1].length if cache is not None else 0
        pos = torch.arange(off, off + n, device=x.device)
        q_raw = self._query(x)
        q = self._rope(q_raw, pos)
        kx, vx = self._keys_values(x)
        kh, vh = self._keys_values(h)
        kx, kh = self._rope(kx, pos), self._rope(kh, pos)
        if cache is not None:
            hc, xc = cache
            kh, vh = torch.cat([hc.k, kh], 1), torch.cat([hc.v, vh], 1)
            kx, vx = torch.cat([xc.k, kx], 1), torch.cat([xc.v, vx], 1)
        S = off + n
        causal = torch.arange(S, device=x.device)[None, :] <= pos[:, None]  # [n, S]
        out = self._attend_prefix(
            q, q_raw, torch.cat([kh, kx], 1), torch.cat([vh, vx], 1), torch.cat([causal, causal], 1)
        )
        return out.reshape(B, n, self.n_heads * self.head_dim), (KVCache(kh, vh), KVCache(kx, vx))

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per token: the base count plus scores against the persistent tokens."""
        extra = 2 * 2 * self.n_heads * self.head_dim * self.n_persistent
        return super().flops_per_token(seq_len) + extra
