"""TTT-Linear / TTT-MLP token mixers (Sun et al. 2024), on the mini-batch TTT ops.

Axis legend: B batch, T tokens, D model width, H heads, F = D / H head dim.

Layer (the TTT layer of the paper's Transformer backbone, "TTT-Linear (T)" / "TTT-MLP (T)",
following the official PyTorch implementation)::

    q, k, v = wq(x), wk(x), wv(x)                  per head [B, T, H, F] (theta_Q, theta_K, theta_V)
    q, k    = rope(q, k, position mod b)           RoPE by position *inside* the mini-batch
    eta     = base_lr * sigmoid(lr_proj(x)) / F    per token and head, learned (paper section 2.7)
    o, W    = TTT(q, k, v, eta; W0, LN)            inner model trained on the sequence (ops/ttt)
    y       = wo(post_norm(o) [* gelu(wg(x))])     LayerNorm, optional gate, output projection

The inner model's initial weights ``W0`` (and the inner LayerNorm) are outer-loop parameters,
meta-learned by backpropagating through the inner updates (Nested Learning arXiv 2512.24695,
section 3.3: knowledge transfer "via initialization").

Per-sequence state (:class:`TTTMixerState`): the inner weights, plus the anchor weights and the
offset of a partial mini-batch, so prefill + token-by-token decode equals one full call. Decoding
costs O(1) per token (one inner gradient and one read).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nestlearn.layers.rope import rope_cos_sin, rope_frequencies
from nestlearn.ops.ttt import TTTState, chunk_ttt, naive_ttt
from nestlearn.utils.config import options_or_keywords
from nestlearn.utils.residual import mark_residual_out
from nestlearn.utils.state import detach_fields

__all__ = ["TTTMixer", "TTTMixerState"]


class TTTMixerState(NamedTuple):
    """Per-sequence TTT state.

    Attributes:
        inner: the inner model's :class:`~nestlearn.ops.ttt.TTTState` (weights ``[B, H, ...]``,
            anchor, offset), or ``None`` for a fresh sequence, which starts from the layer's
            learned ``W0`` (kept out of the state so gradients reach ``W0``).
    """

    inner: TTTState | None = None

    def detach(self) -> TTTMixerState:
        """Cut the autograd history (truncated backprop through time)."""
        return TTTMixerState(*detach_fields(self))


def _rotate_half(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE (half pairing) on ``x: [B, T, H, F]`` in ``x``'s own dtype (at least float32).

    ``layers.rope.apply_rope`` rounds to float32; the TTT equivalence tests run in float64, and
    the positions here are tiny (``< b``), so the tables are exact in either dtype.
    """
    wdt = torch.promote_types(x.dtype, torch.float32)
    c, s = cos.to(wdt)[None, :, None, :], sin.to(wdt)[None, :, None, :]
    x1, x2 = x.to(wdt).chunk(2, dim=-1)
    return torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).to(x.dtype)


@dataclass(kw_only=True)
class TTTMixerOptions:
    """Options of :class:`TTTMixer`, declared once: the ``ttt-linear`` and ``ttt-mlp`` families'
    ``model.mixer`` options are these fields (``TTTOptions``)."""

    mini_batch_size: int = 16
    """TTT mini-batch b: inner gradients inside a mini-batch use its starting weights (paper: 16)."""
    base_lr: float | None = None
    """eta_base; None = the paper's value (1.0 for TTT-Linear, 0.1 for TTT-MLP)."""
    mlp_expand: int = 4
    """TTT-MLP only: inner hidden width over the head dim (paper: 4)."""
    rope: bool = True
    """Rotate q/k by the position inside the mini-batch (official implementation)."""
    gate: bool = False
    """Output gate gelu(wg(x)) before ``wo`` (the official Mamba-backbone variant uses it)."""
    naive: bool = False
    """Run the per-token reference op instead of the dual form (checks and benchmarks)."""

    def __post_init__(self) -> None:
        if self.mini_batch_size < 1:
            raise ValueError(
                f"mini_batch_size must be >= 1, got {self.mini_batch_size}; try 16"
            )
        if self.base_lr is not None and not self.base_lr > 0:
            raise ValueError(f"base_lr must be > 0 or null, got {self.base_lr}")
        if self.mlp_expand < 1:
            raise ValueError(f"mlp_expand must be >= 1, got {self.mlp_expand}")


class TTTMixer(nn.Module):
    """TTT layer: ``x: [B, T, D] -> [B, T, D]`` with the house ``(y, state)`` signature.

    Args:
        dim: model width ``D``.
        n_heads: heads ``H`` (``F = D / H`` must be even for RoPE).
        inner: ``"linear"`` (TTT-Linear) or ``"mlp"`` (TTT-MLP, hidden ``mlp_expand * F``, GELU).
        options: the layer's options (:class:`TTTMixerOptions`, fields documented there); or
            give them as keywords (``TTTMixer(64, 4, mini_batch_size=8)``), not both.
        rope_base: RoPE base.
        ln_eps: epsilon of the inner LayerNorm and the post-norm.
        init_seed: seed of this layer's own random init (``W0``): see :meth:`reset_parameters`.
    """

    supports_naive = True
    """``naive=True`` runs the per-token reference op (``nestlearn bench --naive``)."""

    def __init__(
        self,
        dim: int,
        n_heads: int,
        options: TTTMixerOptions | None = None,
        *,
        inner: Literal["linear", "mlp"] = "linear",
        rope_base: float = 10000.0,
        ln_eps: float = 1e-6,
        init_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.options = o = options_or_keywords(TTTMixerOptions, options, kwargs)
        mini_batch_size, base_lr, mlp_expand = o.mini_batch_size, o.base_lr, o.mlp_expand
        rope, gate, naive = o.rope, o.gate, o.naive
        if inner not in ("linear", "mlp"):
            raise ValueError(f"inner must be 'linear' or 'mlp', got {inner!r}")
        if dim % n_heads:
            raise ValueError(f"dim={dim} must be divisible by n_heads={n_heads}")
        Fd = dim // n_heads
        if rope and Fd % 2:
            raise ValueError(f"head dim {Fd} must be even for RoPE; change n_heads or rope=False")
        self.dim, self.n_heads, self.head_dim, self.kind = dim, n_heads, Fd, inner
        self.mini_batch_size, self.rope, self.rope_base = mini_batch_size, rope, rope_base
        self.base_lr = base_lr if base_lr is not None else (1.0 if inner == "linear" else 0.1)
        self.ln_eps, self.naive, self.init_seed = ln_eps, naive, init_seed
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.lr_proj = nn.Linear(dim, n_heads, bias=True)
        Fo = Fd * mlp_expand if inner == "mlp" else Fd
        self.W1 = nn.Parameter(torch.empty(n_heads, Fd, Fo))
        self.b1 = nn.Parameter(torch.empty(n_heads, Fo))
        if inner == "mlp":
            self.W2 = nn.Parameter(torch.empty(n_heads, Fo, Fd))
            self.b2 = nn.Parameter(torch.empty(n_heads, Fd))
        self.ttt_norm_weight = nn.Parameter(torch.empty(n_heads, Fd))
        self.ttt_norm_bias = nn.Parameter(torch.empty(n_heads, Fd))
        self.post_norm = nn.LayerNorm(dim, eps=ln_eps)
        self.wg = nn.Linear(dim, dim, bias=False) if gate else None
        self.wo = mark_residual_out(nn.Linear(dim, dim, bias=False))
        self.register_buffer("inv_freq", rope_frequencies(Fd, rope_base), persistent=False)

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Official TTT init for the parameters the skeleton does not set:

        ============================ ==============================================
        W1 (and W2 for TTT-MLP)      normal(0, 0.02), per head
        b1 (and b2)                  zeros
        ttt_norm_weight / _bias      ones / zeros
        ============================ ==============================================

        (``lr_proj`` is a Linear: normal(0, init_std), bias zero, as the official
        ``learnable_ttt_lr``.) The normal draws use a generator seeded by ``init_seed`` (the
        layer index), not the global RNG, so ``build_model(cfg, seed=s)`` is reproducible; these
        weights therefore do not change with ``s``.
        """
        gen = torch.Generator().manual_seed(0x777 + self.init_seed)
        for w in self._inner_params()[0::2]:
            w.copy_(torch.randn(w.shape, generator=gen, dtype=torch.float64) * 0.02)
        for b in self._inner_params()[1::2]:
            b.zero_()
        self.ttt_norm_weight.fill_(1.0)
        self.ttt_norm_bias.zero_()

    def reset_buffers(self) -> None:
        """Recompute the RoPE frequencies (needed after building on the meta device)."""
        self.inv_freq = rope_frequencies(self.head_dim, self.rope_base, device=self.W1.device)

    def _inner_params(self) -> tuple[Tensor, ...]:
        if self.kind == "linear":
            return (self.W1, self.b1)
        return (self.W1, self.b1, self.W2, self.b2)

    # ----------------------------------------------------------------- state
    def init_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> TTTMixerState:
        """A fresh state: the next call starts from the learned initial weights ``W0``."""
        return TTTMixerState(None)

    # --------------------------------------------------------------- forward
    def forward(
        self, x: Tensor, *, state: TTTMixerState | None = None
    ) -> tuple[Tensor, TTTMixerState | None]:
        """``x: [B, T, D] -> y: [B, T, D]``; with ``state`` continue that sequence."""
        b, T, _ = x.shape
        H, Fd = self.n_heads, self.head_dim
        q = self.wq(x).view(b, T, H, Fd)
        k = self.wk(x).view(b, T, H, Fd)
        v = self.wv(x).view(b, T, H, Fd)
        inner = state.inner if state is not None else None
        if inner is None:  # fresh sequence: start from W0 (expanded, so gradients reach it)
            inner = TTTState(tuple(p.expand(b, *p.shape) for p in self._inner_params()))
        if self.rope:
            pos = (torch.arange(T, device=x.device) + inner.offset) % self.mini_batch_size
            cos, sin = rope_cos_sin(pos, self.inv_freq)
            q, k = _rotate_half(q, cos, sin), _rotate_half(k, cos, sin)
        wdt = torch.promote_types(x.dtype, torch.float32)
        eta = (self.base_lr / Fd) * torch.sigmoid(self.lr_proj(x).to(wdt))  # [B, T, H]
        op = naive_ttt if self.naive else chunk_ttt
        o, inner = op(
            q,
            k,
            v,
            eta,
            self.ttt_norm_weight,
            self.ttt_norm_bias,
            inner,
            mini_batch_size=self.mini_batch_size,
            eps=self.ln_eps,
        )
        o = self.post_norm(o.reshape(b, T, self.dim))
        if self.wg is not None:
            o = o * F.gelu(self.wg(x), approximate="tanh")
        y = self.wo(o)
        return y, (TTTMixerState(inner) if state is not None else None)

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per token: projections plus the inner model's dual form."""
        D, H, Fd, bs = self.dim, self.n_heads, self.head_dim, self.mini_batch_size
        proj = 2 * D * (4 * D + H) + (2 * D * D if self.wg is not None else 0)
        Fo = self.W1.shape[-1]
        # per layer of the inner model: gradient point, read and update (3 matmuls), plus the
        # intra-mini-batch attention-like terms (Q K^T and A @ G)
        inner = 6 * Fd * Fo + 4 * bs * (Fd + Fo) // 2
        if self.kind == "mlp":
            inner += 6 * Fo * Fd
        return proj + H * inner
