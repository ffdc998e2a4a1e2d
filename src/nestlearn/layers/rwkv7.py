"""RWKV-7 "Goose" time mixing as a token mixer: ``x: [B, T, D] -> [B, T, D]``.

Axis legend: B batch, T tokens, D model width, H heads, F = D / H head dim, R a LoRA rank.

Recipe (Peng et al. 2025, arXiv 2503.14456 §4; flash-linear-attention's ``RWKV7Attention``)::

    x_c      = x + (x_{t-1} - x) * mu_c              token shift, c in {r, w, k, v, a, g}
    r, k, v  = W_r x_r, W_k x_k, W_v x_v
    w        = -e^{-1/2} sigmoid(LoRA_w(x_w))          per-channel log-decay in (-0.607, 0)
    alpha    = sigmoid(LoRA_a(x_a))                    in-context learning rate per channel
    kappa    = normalize(k * k_k)  (per head)          removal key
    k        = k * (1 + (alpha - 1) * k_a)
    o, S     = DPLR delta rule(r, w, k, v, a = -kappa, b = kappa * alpha)   (ops/rwkv7)
    o        = GroupNorm_head(o) + ((r * k * r_k).sum_head) v                 "bonus" term
    y        = W_o (o * LoRA_g(x_g))                    LoRA_g: sigmoid inside, no bias

``S_t = S_{t-1} (diag(e^{w_t}) - kappa_t^T (alpha_t * kappa_t)) + v_t^T k_t`` in the paper's
value-by-key form: a delta rule (one l2 regression step along ``kappa`` with rate ``alpha``) on top of
a per-channel decay, the digest's eq. 65 row of Nested Learning's MIRAS table.

Differences from RWKV-7 as released, on purpose: no value residual across layers (``v_first``: our
blocks are independent, the shared skeleton passes nothing between them), and the FFN is the
shared SwiGLU rather than RWKV's squared-ReLU channel mix. Initial values follow fla's layer-index
dependent recipe (its ``_initialize_weights``), see :meth:`RWKV7Mixer.reset_parameters`.

Decoding is O(1) per token: the state is the previous token's ``x`` and the ``[K, V]`` matrix per
head (:class:`RWKV7State`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nestlearn.ops.fla_dispatch import fla_or_none
from nestlearn.ops.rwkv7 import chunk_rwkv7, naive_recurrent_rwkv7
from nestlearn.utils.config import options_or_keywords
from nestlearn.utils.dtypes import compute_dtype
from nestlearn.utils.residual import mark_residual_out

__all__ = ["RWKV7Mixer", "RWKV7State"]

RECURRENT_MAX_T = 4
"""Calls with at most this many tokens (decode) use the per-token recurrence."""
W_SCALE = math.exp(-0.5)
"""``w = -e^{-1/2} sigmoid(.)``: per-token decays in ``(e^{-0.607}, 1)`` (RWKV-7 / fla)."""


@dataclass
class RWKV7State:
    """``shift: [B, D]`` the previous token's input; ``memory: [B, H, F, F]`` (compute dtype)."""

    shift: Tensor
    memory: Tensor

    def detach(self) -> RWKV7State:
        return RWKV7State(self.shift.detach(), self.memory.detach())


def _lora_rank(dim: int, factor: float, head_dim: int) -> int:
    """fla's default LoRA ranks: ``max(32, round(factor sqrt(D) (F / 64) / 32) * 32)``."""
    return max(32, int(round(factor * math.sqrt(dim) * (head_dim / 64) / 32) * 32))


@dataclass
class RWKV7MixerOptions:
    """Options of :class:`RWKV7Mixer`, declared once: the ``rwkv7`` family's ``model.mixer``
    options are these fields (``RWKV7Options``)."""

    chunk_size: int | None = None
    """Chunk of the DPLR op (exact at any value); null = the op's default (32)."""
    naive: bool = False
    """Use the per-token reference loop (tests, ``bench --naive``)."""
    backend: str = "auto"
    """``auto`` (fla's kernel on CUDA with bf16/fp16 activations when installed), ``torch`` or
    ``fla``."""

    def __post_init__(self) -> None:
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}; try 32")
        if self.backend not in ("auto", "torch", "fla"):
            raise ValueError(f"backend must be auto, torch or fla, got {self.backend!r}")


class RWKV7Mixer(nn.Module):
    """RWKV-7 time mixing with the house ``forward(x, *, state=None)``.

    Args:
        dim: model width ``D``; n_heads: heads ``H`` (head dim ``F = D / H``).
        layer: this block's index and n_layers the model depth (layer-dependent init).
        options: the layer's options (:class:`RWKV7MixerOptions`, fields documented there); or
            give them as keywords (``RWKV7Mixer(64, 4, chunk_size=16)``), not both.
        norm_eps: GroupNorm epsilon per channel (fla: ``F * 1e-5`` per head group).
    """

    supports_naive = True
    """``naive=True`` runs the per-token reference recurrence (``nestlearn bench --naive``)."""

    def __init__(
        self,
        dim: int,
        n_heads: int,
        options: RWKV7MixerOptions | None = None,
        *,
        layer: int = 0,
        n_layers: int = 1,
        norm_eps: float = 1e-5,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.options = o = options_or_keywords(RWKV7MixerOptions, options, kwargs)
        chunk_size, naive, backend = o.chunk_size, o.naive, o.backend
        if dim % n_heads:
            raise ValueError(f"dim={dim} must be divisible by n_heads={n_heads}")
        F_ = dim // n_heads
        self.dim, self.n_heads, self.head_dim = dim, n_heads, F_
        self.layer, self.n_layers = layer, max(1, n_layers)
        # seed of the LoRA up-projections' random init; the model sets it from its seed
        # (layer_seed(seed, layer), = layer for seed 0)
        self.init_seed = layer
        self.chunk_size, self.norm_eps, self.naive, self.backend = (
            chunk_size,
            norm_eps,
            naive,
            backend,
        )
        self.mu = nn.Parameter(torch.empty(6, dim))  # token-shift mix of r, w, k, v, a, g
        self.wr = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.wo = mark_residual_out(nn.Linear(dim, dim, bias=False))
        rw, ra = _lora_rank(dim, 2.5, F_), _lora_rank(dim, 2.5, F_)
        rg = max(32, int(round(5 * math.sqrt(dim) / 32) * 32))
        self.w_down, self.w_up = (
            nn.Parameter(torch.empty(dim, rw)),
            nn.Parameter(torch.empty(rw, dim)),
        )
        self.w_bias = nn.Parameter(torch.empty(dim))
        self.a_down, self.a_up = (
            nn.Parameter(torch.empty(dim, ra)),
            nn.Parameter(torch.empty(ra, dim)),
        )
        self.a_bias = nn.Parameter(torch.empty(dim))
        self.g_down, self.g_up = (
            nn.Parameter(torch.empty(dim, rg)),
            nn.Parameter(torch.empty(rg, dim)),
        )
        self.k_k = nn.Parameter(torch.empty(dim))
        self.k_a = nn.Parameter(torch.empty(dim))
        self.r_k = nn.Parameter(torch.empty(n_heads, F_))
        self.gn_weight = nn.Parameter(torch.empty(dim))
        self.gn_bias = nn.Parameter(torch.empty(dim))
        if self.mu.device.type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """fla's RWKV-7 init (its ``_initialize_weights``), for what the skeleton does not set.

        With ``r0 = layer / (n_layers - 1)``, ``r1 = 1 - layer / n_layers`` and ``d_n = n / D``:
        ``mu_c = 1 - d^{p_c r1}`` (``p`` = 0.2, 0.9, 0.7, 0.7, 0.9, 0.2 for r, w, k, v, a, g); the
        decay bias ``-6 + 6 (n / (D-1))^{1 + r0^0.3} + 0.5 + 2.5 z`` (``z`` a per-head zigzag); the
        ``a`` bias ``-0.19 + 0.3 z + 0.4 lin``; ``k_k = 0.71 - 0.1 lin``, ``k_a = 1.02``,
        ``r_k = -0.04``; GroupNorm weight ``((layer + 1) / n_layers)^0.7``; LoRA down-projections
        zero and up-projections orthogonal with gain 0.1, drawn from a generator seeded by
        ``init_seed``; the rest is deterministic. (The model skeleton then sets W_r, W_k,
        W_v, W_o to its own normal init.)
        """
        D, F_, L = self.dim, self.head_dim, self.n_layers
        r0 = self.layer / (L - 1) if L > 1 else 0.0
        r1 = 1.0 - self.layer / L
        n = torch.arange(D, dtype=torch.float64)
        ddd = n / D
        lin = n / (D - 1) - 0.5
        zig = ((n % F_) - (F_ - 1) / 2) / ((F_ - 1) / 2)
        zig = zig * zig.abs()
        for i, p in enumerate((0.2, 0.9, 0.7, 0.7, 0.9, 0.2)):
            self.mu[i].copy_(1.0 - ddd.pow(p * r1))
        www = -6.0 + 6.0 * (n / (D - 1)).pow(1.0 + r0**0.3)
        self.w_bias.copy_(www + 0.5 + 2.5 * zig)
        self.a_bias.copy_(-0.19 + 0.3 * zig + 0.4 * lin)
        self.k_k.copy_(0.71 - 0.1 * lin)
        self.k_a.fill_(1.02)
        self.r_k.fill_(-0.04)
        self.gn_weight.fill_(((self.layer + 1) / L) ** 0.7)
        self.gn_bias.zero_()
        gen = torch.Generator().manual_seed(0x7257 + self.init_seed)
        for down, up in ((self.w_down, self.w_up), (self.a_down, self.a_up),
                         (self.g_down, self.g_up)):  # fmt: skip
            down.zero_()
            q, _ = torch.linalg.qr(torch.randn(up.shape[1], up.shape[0], generator=gen,
                                               dtype=torch.float64))  # fmt: skip
            gain = math.sqrt(up.shape[1] / up.shape[0]) if up.shape[1] > up.shape[0] else 1.0
            up.copy_(0.1 * gain * q.T)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> RWKV7State:
        mdt = compute_dtype(dtype)
        F_ = self.head_dim
        return RWKV7State(
            torch.zeros(batch_size, self.dim, device=device, dtype=dtype),
            torch.zeros(batch_size, self.n_heads, F_, F_, device=device, dtype=mdt),
        )

    def forward(
        self, x: Tensor, *, state: RWKV7State | None = None
    ) -> tuple[Tensor, RWKV7State | None]:
        B, T, D = x.shape
        H, F_ = self.n_heads, self.head_dim
        prev = state.shift.to(x.dtype).unsqueeze(1) if state is not None else x.new_zeros(B, 1, D)
        shifted = torch.cat([prev, x[:, :-1]], dim=1)
        xs = x.unsqueeze(2) + (shifted - x).unsqueeze(2) * self.mu.to(x.dtype)  # [B, T, 6, D]
        xr, xw, xk, xv, xa, xg = xs.unbind(2)
        cdt = compute_dtype(x.dtype)
        r, k, v = self.wr(xr), self.wk(xk), self.wv(xv)
        w = -W_SCALE * torch.sigmoid(
            (torch.tanh(xw @ self.w_down) @ self.w_up + self.w_bias).to(cdt)
        )
        alpha = torch.sigmoid(xa @ self.a_down @ self.a_up + self.a_bias)
        g = torch.sigmoid(xg @ self.g_down) @ self.g_up
        kk = F.normalize((k * self.k_k).view(B, T, H, F_), dim=-1)
        k = k * (1.0 + (alpha - 1.0) * self.k_a)

        def heads(t: Tensor) -> Tensor:
            return t.reshape(B, T, H, F_).to(cdt)

        r_, w_, k_, v_, a_ = heads(r), heads(w), heads(k), heads(v), heads(alpha)
        kk = kk.to(cdt)
        S0 = state.memory if state is not None else None
        o, S = self._op(r_, w_, k_, v_, -kk, kk * a_, S0, x.dtype)
        o = F.group_norm(o.reshape(B * T, D), H, self.gn_weight.to(cdt), self.gn_bias.to(cdt),
                         eps=F_ * self.norm_eps).view(B, T, H, F_)  # fmt: skip
        bonus = (r_ * k_ * self.r_k.to(cdt)).sum(-1, keepdim=True) * v_
        o = ((o + bonus).reshape(B, T, D)).to(x.dtype) * g
        y = self.wo(o)
        new = RWKV7State(x[:, -1], S) if state is not None else None
        return y, new

    def _op(
        self, r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor,
        S0: Tensor | None, act: torch.dtype,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        out = fla_or_none("fla_rwkv7", self.backend, self.naive, r, w, k, v, a, b, S0,
                          act_dtype=act)  # fmt: skip
        if out is not None:
            return out
        if self.naive or r.shape[1] <= RECURRENT_MAX_T:
            return naive_recurrent_rwkv7(r, w, k, v, a, b, S0)
        return chunk_rwkv7(r, w, k, v, a, b, S0, chunk_size=self.chunk_size)

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per token: projections, LoRAs and the chunked DPLR op."""
        D, H, F_ = self.dim, self.n_heads, self.head_dim
        proj = 2 * 4 * D * D
        lora = 2 * sum(p.numel() for p in (self.w_down, self.w_up, self.a_down, self.a_up,
                                           self.g_down, self.g_up))  # fmt: skip
        C = min(self.chunk_size or 32, seq_len)
        # per chunk: 4 C x C x F products, C^3 solve, 2 C^2 F for W and Uv, 8 C F F in the loop
        op = (4 * C * C * F_ + C**3 + 4 * C * C * F_ + 8 * C * F_ * F_) // C
        return proj + lora + H * op
