"""RetNet's multi-scale retention (MSR) token mixer (Sun et al. 2023, arXiv 2307.08621).

Axis legend: B batch, T tokens, D model width, H heads, K key head dim, V value head dim.

    q, k  = xPos/RoPE-rotate(W_q x), xPos/RoPE-rotate(W_k x)     (rotation e^{i n theta}, eq. 3)
    v     = W_v x                                                (value width expand_v * D)
    o_h   = retention_h(q, k, v) with gamma_h = 1 - 2^(-5-h)     (eq. 8, ops.retention)
    y     = W_o( swish(W_g x) * GroupNorm_H(o) )                 (eq. 8)

The paper's xPos adds a per-dimension scale ``zeta^n`` on top of the rotation; RetNet folds the
scale into the decay ``gamma`` (its eq. 3 keeps only ``e^{i n theta}``), so the rotation here is
plain RoPE with interleaved pairs, as in the paper's reference code. The per-head decays are fixed
constants (not parameters), computed in float32 on every call. The paper's normalisations of the retention scores are per-row positive
scalars that GroupNorm cancels, so they are omitted (see ``ops/retention/README.md``).

Decoding is O(1) per token: the state is the ``[K, V]`` matrix per head plus the position of the
next token (for the rotation), :class:`RetNetState`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nestlearn.layers.rope import apply_rope, rope_cos_sin, rope_frequencies
from nestlearn.ops.fla_dispatch import fla_or_none
from nestlearn.ops.retention import chunk_retention, naive_recurrent_retention
from nestlearn.utils.config import options_or_keywords
from nestlearn.utils.dtypes import compute_dtype
from nestlearn.utils.residual import mark_residual_out

__all__ = ["HeadGroupNorm", "RetNetMixer", "RetNetState", "retnet_gammas"]

RECURRENT_MAX_T = 4
"""Calls with at most this many tokens (decode) use the per-token recurrence."""


def retnet_gammas(n_heads: int, device: torch.device | None = None) -> Tensor:
    """RetNet's fixed per-head decays ``gamma_h = 1 - 2^(-5-h)``, ``h = 0..H-1`` (float32)."""
    h = torch.arange(n_heads, device=device, dtype=torch.float64)
    return (1.0 - 2.0 ** (-5.0 - h)).float()


@dataclass
class RetNetState:
    """Per-sequence state of a :class:`RetNetMixer`.

    ``memory: [B, H, K, V]`` (float32, float64 for float64 models); ``position``: tokens consumed.
    """

    memory: Tensor
    position: int = 0

    def detach(self) -> RetNetState:
        return RetNetState(self.memory.detach(), self.position)


class HeadGroupNorm(nn.Module):
    """GroupNorm with one group per head over ``[..., H, V]`` (LayerNorm per head), fp32 math.

    Affine ``weight, bias: [H * V]`` (ones / zeros), as ``nn.GroupNorm(H, H * V)`` in RetNet.
    """

    def __init__(self, n_heads: int, head_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.eps = n_heads, head_dim, eps
        self.weight = nn.Parameter(torch.empty(n_heads * head_dim))
        self.bias = nn.Parameter(torch.empty(n_heads * head_dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``x: [..., H, V] -> [..., H * V]``."""
        cdt = compute_dtype(x.dtype)
        xf = F.layer_norm(x.to(cdt), (self.head_dim,), eps=self.eps).flatten(-2)
        return (xf * self.weight.to(cdt) + self.bias.to(cdt)).to(x.dtype)


@dataclass
class RetNetMixerOptions:
    """Options of :class:`RetNetMixer`, declared once: the ``retnet`` family's ``model.mixer``
    options are these fields (``RetNetOptions``)."""

    expand_v: float = 2.0
    """Value width ``H V = expand_v * dim`` (2 in RetNet)."""
    chunk_size: int | None = None
    """Chunk length of the chunkwise retention (exact at any value); null = the op's fastest
    (64 when training, 32 for inference on CPU)."""
    naive: bool = False
    """Use the per-token reference loop instead of the chunkwise op (benchmarks, debugging)."""
    backend: str = "auto"
    """``auto`` (fla kernels on CUDA with bf16/fp16 when installed), ``torch`` or ``fla``."""

    def __post_init__(self) -> None:
        if not self.expand_v > 0:
            raise ValueError(f"expand_v must be > 0, got {self.expand_v}; try 2")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}; try 64")
        if self.backend not in ("auto", "torch", "fla"):
            raise ValueError(f"backend must be auto, torch or fla, got {self.backend!r}")


class RetNetMixer(nn.Module):
    """Multi-scale retention: ``forward(x [B, T, D], *, state=None) -> (y [B, T, D], state)``.

    Args:
        dim: model width ``D``.
        n_heads: heads ``H``; key head dim ``K = D / H`` (must be even for the rotation).
        options: the layer's options (:class:`RetNetMixerOptions`, fields documented there); or
            give them as keywords (``RetNetMixer(64, 4, expand_v=1.0)``), not both.
        rope_base: base of the rotation frequencies.
        norm_eps: GroupNorm epsilon.
    """

    supports_naive = True
    """``naive=True`` runs the per-token reference recurrence (``nestlearn bench --naive``)."""

    def __init__(
        self,
        dim: int,
        n_heads: int,
        options: RetNetMixerOptions | None = None,
        *,
        rope_base: float = 10000.0,
        norm_eps: float = 1e-6,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.options = o = options_or_keywords(RetNetMixerOptions, options, kwargs)
        expand_v, chunk_size, naive, backend = o.expand_v, o.chunk_size, o.naive, o.backend
        if dim % n_heads:
            raise ValueError(f"dim={dim} must be divisible by n_heads={n_heads}")
        K = dim // n_heads
        V = K * expand_v
        if V != int(V) or V < 1:
            raise ValueError(
                f"value head dim = (dim / n_heads) * expand_v = {K} * {expand_v} must be a "
                "positive integer; pick expand_v so it is"
            )
        self.dim, self.n_heads, self.head_k, self.head_v = dim, n_heads, K, int(V)
        self.chunk_size, self.rope_base, self.naive, self.backend = (
            chunk_size, rope_base, naive, backend
        )  # fmt: skip
        HV = n_heads * self.head_v
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, HV, bias=False)
        self.wg = nn.Linear(dim, HV, bias=False)
        self.group_norm = HeadGroupNorm(n_heads, self.head_v, norm_eps)
        self.wo = mark_residual_out(nn.Linear(HV, dim, bias=False))
        self.register_buffer("inv_freq", rope_frequencies(K, rope_base), persistent=False)

    def reset_buffers(self) -> None:
        """Recompute the rotation frequencies (needed after a meta-device build)."""
        self.inv_freq = rope_frequencies(self.head_k, self.rope_base, device=self.wq.weight.device)

    def decays(self, device: torch.device | None = None) -> Tensor:
        """The fixed per-head decays ``gamma_h = 1 - 2^(-5-h)``, ``[H]`` float32.

        Computed on the fly rather than kept as a buffer: casting a model to bf16/fp16 would round
        ``1 - 2^-9`` and beyond to exactly 1 and silently remove the decay of most heads.
        """
        return retnet_gammas(self.n_heads, device=device)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> RetNetState:
        mdt = compute_dtype(dtype)
        shape = (batch_size, self.n_heads, self.head_k, self.head_v)
        return RetNetState(torch.zeros(shape, device=device, dtype=mdt), 0)

    def forward(
        self, x: Tensor, *, state: RetNetState | None = None
    ) -> tuple[Tensor, RetNetState | None]:
        B, T, _ = x.shape
        H, K, V = self.n_heads, self.head_k, self.head_v
        past = state.position if state is not None else 0
        q = self.wq(x).view(B, T, H, K)
        k = self.wk(x).view(B, T, H, K)
        v = self.wv(x).view(B, T, H, V)
        act = q.dtype  # bf16 under autocast even though x is float32
        cdt = compute_dtype(act)  # the op's compute dtype
        cos, sin = rope_cos_sin(torch.arange(past, past + T, device=x.device), self.inv_freq)
        q = apply_rope(q.to(cdt), cos, sin, interleaved=True)
        k = apply_rope(k.to(cdt), cos, sin, interleaved=True)
        S0 = state.memory if state is not None else None
        o, S = self._retention(q, k, v.to(cdt), S0, act)  # [B, T, H, V] in cdt
        y = self.wo(F.silu(self.wg(x)) * self.group_norm(o).to(act))
        return y, (RetNetState(S, past + T) if state is not None else None)

    def _retention(
        self, q: Tensor, k: Tensor, v: Tensor, S0: Tensor | None, act: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        decays = self.decays(q.device)
        out = fla_or_none("fla_retention", self.backend, self.naive, q, k, v, decays, S0,
                          act_dtype=act)  # fmt: skip
        if out is not None:
            return out
        if self.naive or q.shape[1] <= RECURRENT_MAX_T:
            return naive_recurrent_retention(q, k, v, decays, S0)
        return chunk_retention(q, k, v, decays, S0, chunk_size=self.chunk_size)

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per token: projections plus the chunkwise retention.

        Per chunk and head: ``Q K^T`` and ``P V`` (``2 C^2 (K + V)``), the chunk write and the
        reads of the chunk-start state (``4 C K V``); divided by ``C``.
        """
        proj = 2 * sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        C = min(self.chunk_size or 64, seq_len)
        K, V = self.head_k, self.head_v
        return proj + self.n_heads * (2 * C * C * (K + V) + 4 * C * K * V) // C
