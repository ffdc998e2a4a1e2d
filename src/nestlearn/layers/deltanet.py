"""DeltaNet and Gated DeltaNet token mixers, plus the causal short convolution they use.

Axis legend: B batch, T tokens, D model width, H heads, K key head dim, V value head dim,
W conv width, Cc conv channels (``2 H K + H V``).

Layer recipe (Yang et al. 2024, arXiv 2406.06484 section 3.3; Yang, Kautz & Hatamizadeh 2024,
arXiv 2412.06464 section 3.4), the standard one used by flash-linear-attention's baselines:

    q, k, v = SiLU(ShortConv_4(W_q x)), SiLU(ShortConv_4(W_k x)), SiLU(ShortConv_4(W_v x))
    q, k    = q / ||q||, k / ||k||                          (per head; keeps beta ||k||^2 <= 1)
    beta    = sigmoid(W_b x)                                (per head and token; 2 sigmoid(.)
                                                             with ``allow_neg_eigval``)
    alpha   = exp(-exp(A_log) * softplus(W_a x + dt_bias))  (gated only, per head and token)
    o       = delta rule (ops.delta_rule) over (q, k, v, beta[, log alpha])
    y       = W_o( RMSNorm_head(o) * SiLU(W_g x) )         (output norm + gate)

Decoding is O(1) per token: the state is the conv's last ``W - 1`` inputs plus the ``[K, V]``
fast-weight matrix per head (:class:`DeltaNetState`). In Nested Learning terms (arXiv
2512.24695, section 3.1 and the MIRAS table) the matrix is a level-2 associative memory trained in
context by one GD step per token on an l2 regression loss, while the projections are the level-1
parameters trained by the outer optimiser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nestlearn.layers.norm import RMSNorm
from nestlearn.ops.conv import short_conv_silu
from nestlearn.ops.delta_rule import (
    chunk_delta_rule,
    chunk_gated_delta_rule,
    naive_recurrent_delta_rule,
    naive_recurrent_gated_delta_rule,
)
from nestlearn.ops.fla_dispatch import fla_or_none
from nestlearn.utils.config import options_or_keywords
from nestlearn.utils.dtypes import compute_dtype
from nestlearn.utils.init import uniform_
from nestlearn.utils.residual import mark_residual_out

__all__ = ["DeltaNetMixer", "DeltaNetState", "ShortConv", "delta_op_flops"]

RECURRENT_MAX_T = 4
"""Calls with at most this many tokens (decode) use the per-token recurrence: for one token it is
a handful of small ops, cheaper than setting up a chunk."""


@dataclass
class DeltaNetState:
    """Per-sequence state of a :class:`DeltaNetMixer`.

    ``conv: [B, W-1, Cc]`` the short conv's last inputs (activation dtype);
    ``memory: [B, H, K, V]`` the fast-weight matrix (float32, float64 for float64 models).
    """

    conv: Tensor
    memory: Tensor

    def detach(self) -> DeltaNetState:
        return DeltaNetState(self.conv.detach(), self.memory.detach())


class ShortConv(nn.Module):
    """Causal depthwise 1-D convolution over time followed by SiLU (Mamba/DeltaNet "short conv").

    Shapes: ``x: [B, T, Cc] -> [B, T, Cc]``. ``tail: [B, W-1, Cc]`` holds the inputs preceding
    ``x`` (zeros at the start of a sequence); the returned tail continues the sequence.
    """

    def __init__(self, channels: int, width: int, *, init_seed: int = 0) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"conv width must be >= 1, got {width}; the standard value is 4")
        self.channels, self.width, self.init_seed = channels, width, init_seed
        self.weight = nn.Parameter(torch.empty(channels, 1, width))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """nn.Conv1d's default for a depthwise kernel: U(-1/sqrt(W), 1/sqrt(W)), drawn from a
        generator seeded by ``init_seed`` (set from the model's seed by ``init_weights``), never
        from torch's global generator."""
        gen = torch.Generator().manual_seed(0xC0471 + self.init_seed)
        uniform_(self.weight, 1.0 / math.sqrt(self.width), gen)

    def init_tail(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        return torch.zeros(batch_size, self.width - 1, self.channels, device=device, dtype=dtype)

    def forward(self, x: Tensor, tail: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return short_conv_silu(x, self.weight, tail)


@dataclass
class DeltaNetMixerOptions:
    """Options of :class:`DeltaNetMixer`, declared once: the ``deltanet`` and ``gated-deltanet``
    families' ``model.mixer`` options are these fields (``DeltaNetOptions``)."""

    head_dim: int | None = None
    """Key/query head dim K; ``None`` means ``dim / n_heads``."""
    expand_v: float = 1.0
    """Value head dim V = ``head_dim * expand_v`` (Gated DeltaNet's paper shapes use 2)."""
    conv_size: int = 4
    """Width W of the causal depthwise short convolution on q, k, v (4 in both papers)."""
    output_gate: bool = True
    """Multiply the normalised output by ``SiLU(W_g x)``."""
    allow_neg_eigval: bool = False
    """``beta = 2 sigmoid(W_b x)`` instead of ``sigmoid(W_b x)``: the state transition
    ``I - beta k k^T`` (unit ``k``) then has eigenvalues in ``[-1, 1]`` instead of ``[0, 1]``,
    which a linear RNN needs to track parity and other state-tracking languages at every length
    (Grazzi et al., ICLR 2025, arXiv 2411.12537; the same switch as flash-linear-attention's
    layers). The state stays non-expansive. Measured on deltanet-tiny
    (``docs/evaluation_synthetic.md``, "DeltaNet's allow_neg_eigval option"): parity Bin0 / Bin1
    100 / 100 against 90 / 8.8, (aa)* 100 / 79 against 43 / 0, with MQAR and the language-model
    loss unchanged within noise. Off by default: DeltaNet's published recipe has beta in [0, 1]."""
    chunk_size: int | None = None
    """Chunk length of the chunked delta rule (exact at any value); null = the op's fastest
    (64 when training, 16 for inference on CPU)."""
    naive: bool = False
    """Use the per-token reference loop instead of the chunked op (benchmarks, debugging)."""
    backend: str = "auto"
    """``auto`` (flash-linear-attention kernels on CUDA with bf16/fp16 activations when the
    package is installed, else the PyTorch chunked op), ``torch`` or ``fla``."""

    def __post_init__(self) -> None:
        if self.head_dim is not None and self.head_dim <= 0:
            raise ValueError(f"head_dim must be positive or null, got {self.head_dim}")
        if self.conv_size < 1:
            raise ValueError(f"conv_size must be >= 1, got {self.conv_size}; try 4")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}; try 64")
        if self.backend not in ("auto", "torch", "fla"):
            raise ValueError(f"backend must be auto, torch or fla, got {self.backend!r}")


class DeltaNetMixer(nn.Module):
    """DeltaNet (``gated=False``) or Gated DeltaNet (``gated=True``) token mixer.

    Shapes: ``x: [B, T, D] -> [B, T, D]``; ``forward(x, *, state=None) -> (y, state)``. With a
    :class:`DeltaNetState` the call continues that sequence, so a full call equals any split into
    segments with the state threaded through, and prefill + token-by-token decode.

    Args:
        dim: model width ``D``.
        n_heads: heads ``H``.
        options: the layer's options (:class:`DeltaNetMixerOptions`, fields documented there);
            or give them as keywords (``DeltaNetMixer(64, 4, conv_size=2)``), not both.
        gated: add the per-token decay ``alpha_t`` (Gated DeltaNet).
        norm_eps: epsilon of the per-head output RMSNorm.
        init_seed: seed of this layer's own random init (``A_log``, ``dt_bias``; the short conv
            has its own); ``LanguageModel.init_weights`` sets it from the model's seed.
    """

    supports_naive = True
    """``naive=True`` runs the per-token reference recurrence (``nestlearn bench --naive``)."""

    def __init__(
        self,
        dim: int,
        n_heads: int,
        options: DeltaNetMixerOptions | None = None,
        *,
        gated: bool = False,
        norm_eps: float = 1e-6,
        init_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.options = o = options_or_keywords(DeltaNetMixerOptions, options, kwargs)
        head_dim, expand_v, conv_size, output_gate = o.head_dim, o.expand_v, o.conv_size, o.output_gate
        chunk_size, naive, backend = o.chunk_size, o.naive, o.backend
        self.init_seed = init_seed
        K = head_dim or dim // n_heads
        V = K * expand_v
        if V != int(V) or V < 1:
            raise ValueError(
                f"value head dim = head_dim * expand_v = {K} * {expand_v} must be a positive "
                "integer; pick expand_v so it is"
            )
        self.dim, self.n_heads, self.head_k, self.head_v = dim, n_heads, K, int(V)
        self.gated, self.chunk_size, self.naive, self.backend = gated, chunk_size, naive, backend
        HK, HV = n_heads * K, n_heads * self.head_v
        self.wq = nn.Linear(dim, HK, bias=False)
        self.wk = nn.Linear(dim, HK, bias=False)
        self.wv = nn.Linear(dim, HV, bias=False)
        self.wb = nn.Linear(dim, n_heads, bias=False)  # beta logits
        self.conv = ShortConv(2 * HK + HV, conv_size, init_seed=init_seed)
        if gated:
            self.wa = nn.Linear(dim, n_heads, bias=False)  # decay-rate logits
            self.A_log = nn.Parameter(torch.empty(n_heads))
            self.dt_bias = nn.Parameter(torch.empty(n_heads))
        self.wg = nn.Linear(dim, HV, bias=False) if output_gate else None
        self.o_norm = RMSNorm(self.head_v, norm_eps)
        self.wo = mark_residual_out(nn.Linear(HV, dim, bias=False))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Decay parameters of the gated variant (Mamba2 / Gated DeltaNet init).

        ``A = exp(A_log) ~ U(1, 16)`` and ``dt = softplus(dt_bias)`` log-uniform in
        ``[1e-3, 0.1]``, so ``log alpha = -A * softplus(W_a x + dt_bias)`` starts between about
        -0.001 and -1.6 per token: some heads remember for ~1000 tokens, others for ~1.
        (The lower end is 1 rather than fla's 0, which would put ``log 0`` in ``A_log``.)
        The draws use a generator seeded by ``init_seed`` (set from the model's seed by
        ``init_weights``), never torch's global generator.
        """
        if not self.gated:
            return
        gen = torch.Generator().manual_seed(0xDE17A + self.init_seed)
        dev, H = self.A_log.device, self.n_heads

        def rand() -> Tensor:
            return torch.rand(H, generator=gen, dtype=torch.float64).to(dev)

        self.A_log.copy_((1.0 + 15.0 * rand()).log())
        lo, hi = math.log(1e-3), math.log(0.1)
        dt = torch.exp(rand() * (hi - lo) + lo).clamp_min(1e-4)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def init_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> DeltaNetState:
        """A fresh state: zero conv tail and zero memory."""
        mdt = compute_dtype(dtype)
        memory = torch.zeros(
            batch_size, self.n_heads, self.head_k, self.head_v, device=device, dtype=mdt
        )
        return DeltaNetState(self.conv.init_tail(batch_size, device, dtype), memory)

    def forward(
        self, x: Tensor, *, state: DeltaNetState | None = None
    ) -> tuple[Tensor, DeltaNetState | None]:
        B, T, _ = x.shape
        H, K, V = self.n_heads, self.head_k, self.head_v
        qkv, tail = self.conv(
            torch.cat([self.wq(x), self.wk(x), self.wv(x)], dim=-1),
            state.conv if state is not None else None,
        )
        act = qkv.dtype  # bf16 under autocast even though x is float32
        cdt = compute_dtype(act)  # the op's compute dtype
        q, k, v = qkv.to(cdt).split([H * K, H * K, H * V], dim=-1)
        q = F.normalize(q.view(B, T, H, K), dim=-1, eps=1e-6)
        k = F.normalize(k.view(B, T, H, K), dim=-1, eps=1e-6)
        v = v.reshape(B, T, H, V)
        beta = torch.sigmoid(self.wb(x).to(cdt))  # [B, T, H]
        if self.options.allow_neg_eigval:  # beta in (0, 2): eigenvalues of I - beta k k^T >= -1
            beta = 2.0 * beta
        g = None
        if self.gated:  # log alpha_t = -A softplus(W_a x + dt_bias)  [B, T, H]
            g = -self.A_log.to(cdt).exp() * F.softplus(self.wa(x).to(cdt) + self.dt_bias.to(cdt))
        S0 = state.memory if state is not None else None
        o, S = self._delta(q, k, v, beta, g, S0, act)  # o: [B, T, H, V] in cdt
        o = self.o_norm(o.to(x.dtype))
        if self.wg is not None:
            o = o * F.silu(self.wg(x)).view(B, T, H, V)
        y = self.wo(o.reshape(B, T, H * V))
        return y, (DeltaNetState(tail, S) if state is not None else None)

    def _delta(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        beta: Tensor,
        g: Tensor | None,
        S0: Tensor | None,
        act: torch.dtype,
    ) -> tuple[Tensor, Tensor]:
        out = fla_or_none("fla_delta_rule", self.backend, self.naive, q, k, v, beta, g, S0,
                          act_dtype=act)  # fmt: skip
        if out is not None:
            return out
        if self.naive or q.shape[1] <= RECURRENT_MAX_T:
            if g is None:
                return naive_recurrent_delta_rule(q, k, v, beta, S0)
            return naive_recurrent_gated_delta_rule(q, k, v, g, beta, S0)
        if g is None:
            return chunk_delta_rule(q, k, v, beta, S0, chunk_size=self.chunk_size)
        return chunk_gated_delta_rule(q, k, v, g, beta, S0, chunk_size=self.chunk_size)

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per token: projections, short conv and the chunked delta rule."""
        proj = 2 * sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        conv = 2 * self.conv.channels * self.conv.width
        C = min(self.chunk_size or 64, seq_len)
        return proj + conv + self.n_heads * delta_op_flops(C, self.head_k, self.head_v)


def delta_op_flops(C: int, K: int, V: int) -> int:
    """Forward FLOPs per token and head of the chunked delta rule with chunk size ``C``.

    Per chunk: ``A`` and ``Q K^T`` (``4 C^2 K``), ``(I + A)^-1`` (``~C^3``), ``W_v`` and ``W_k``
    (``2 C^2 (K + V)``), and in the loop ``W_k S``, ``Q S``, ``K_end^T U`` (``6 C K V``) and
    ``P U`` (``2 C^2 V``); divided by ``C``.
    """
    per_chunk = 4 * C * C * K + C**3 + 2 * C * C * (K + V) + 6 * C * K * V + 2 * C * C * V
    return per_chunk // C
