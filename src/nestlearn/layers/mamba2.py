"""Mamba2 token mixer (Dao & Gu 2024, "Transformers are SSMs"), on the SSD ops.

Axis legend: B batch, T tokens, D model width, E = expand * D inner width, H heads, P head dim
(E = H * P), G groups sharing B/C, N state size, W conv width, Cc = E + 2 G N conv channels.

Layer (the Mamba2 block's mixer, as in the paper's Figure 6 and mamba_ssm's ``Mamba2``)::

    z, xBC, dt = in_proj(x)                        one projection for every input (parallel form)
    xBC        = silu(causal_depthwise_conv(xBC))  width W = 4, over x, B and C together
    x, B, C    = split(xBC)
    y, S       = SSD(x, softplus(dt + dt_bias), A = -exp(A_log), B, C, D)   (ops/ssd)
    out        = out_proj(rmsnorm(y * silu(z)))    gated RMSNorm, per group of E / G channels

In the Nested Learning view (arXiv 2512.24695, eq. 64) the SSD state is a linear associative memory
with a data-dependent learning rate ``dt`` and weight decay ``exp(dt A)``.

Per-sequence state (:class:`Mamba2State`): the last ``W - 1`` conv inputs and the SSD state, so
decoding costs O(1) per token and prefill + token-by-token decode equals one full call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nestlearn.ops.conv import short_conv_silu
from nestlearn.ops.ssd import chunk_ssd, naive_ssd
from nestlearn.utils.config import options_or_keywords
from nestlearn.utils.dtypes import compute_dtype
from nestlearn.utils.residual import mark_residual_out

__all__ = ["Mamba2Mixer", "Mamba2State"]


class Mamba2State(NamedTuple):
    """Per-sequence Mamba2 state.

    Attributes:
        conv: ``[B, W - 1, Cc]`` the last ``W - 1`` conv inputs (pre-activation ``xBC``), in the
            activation dtype; zeros for a fresh sequence (= the conv's causal zero padding).
        ssm: ``[B, H, P, N]`` SSD state in the scan's compute dtype (float32, float64 for float64).
    """

    conv: Tensor
    ssm: Tensor

    def detach(self) -> Mamba2State:
        """Cut the autograd history (truncated backprop through time)."""
        return Mamba2State(self.conv.detach(), self.ssm.detach())


@dataclass(kw_only=True)
class Mamba2MixerOptions:
    """Options of :class:`Mamba2Mixer`, declared once: the ``mamba2`` and ``samba`` families'
    ``model.mixer`` options are these fields plus the families' own (``Mamba2Options``)."""

    d_state: int = 128
    """SSD state size N (Mamba2 paper: 128 at scale; 64 is also common)."""
    expand: int = 2
    """Inner width E = expand * dim."""
    head_dim: int = 64
    """Channels per SSD head P (Mamba2: 64); E must be a multiple of it."""
    n_groups: int = 1
    """Groups G of heads sharing B and C (Mamba2: 1)."""
    conv_width: int = 4
    """Causal depthwise conv width W (Mamba2: 4)."""
    chunk_size: int = 64
    """SSD chunk length: speed only, results do not depend on it."""
    naive: bool = False
    """Run the per-token reference scan (``naive_ssd``) instead of the chunked one (checks and
    benchmarks)."""

    def __post_init__(self) -> None:
        for key in ("d_state", "expand", "head_dim", "n_groups", "conv_width", "chunk_size"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")


class Mamba2Mixer(nn.Module):
    """Mamba2 mixer: ``x: [B, T, D] -> [B, T, D]`` with the house ``(y, state)`` signature.

    Args:
        dim: model width ``D``.
        options: the layer's options (:class:`Mamba2MixerOptions`, fields documented there); or
            give them as keywords (``Mamba2Mixer(64, d_state=16)``), not both.
        dt_min, dt_max, dt_init_floor: range of the initial step sizes (log-uniform).
        a_init_range: range of the initial ``-A`` (uniform).
        norm_eps: epsilon of the gated RMSNorm.
        naive: use the per-token reference scan (``naive_ssd``) everywhere (for checks/benches).
        init_seed: seed of this layer's own random init (conv, ``dt``, ``A``): see
            :meth:`reset_parameters`.
    """

    supports_naive = True
    """``naive=True`` runs the per-token reference scan (``nestlearn bench --naive``)."""

    def __init__(
        self,
        dim: int,
        options: Mamba2MixerOptions | None = None,
        *,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        a_init_range: tuple[float, float] = (1.0, 16.0),
        norm_eps: float = 1e-5,
        init_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.options = o = options_or_keywords(Mamba2MixerOptions, options, kwargs)
        d_state, expand, head_dim, n_groups = o.d_state, o.expand, o.head_dim, o.n_groups
        conv_width, chunk_size, naive = o.conv_width, o.chunk_size, o.naive
        inner = expand * dim
        if inner % head_dim:
            raise ValueError(
                f"expand * dim = {inner} must be a multiple of head_dim={head_dim}; "
                f"try head_dim={math.gcd(inner, 64)}"
            )
        n_heads = inner // head_dim
        if n_heads % n_groups:
            raise ValueError(f"heads {n_heads} must be a multiple of n_groups={n_groups}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        if not 0 < a_init_range[0] <= a_init_range[1]:
            raise ValueError(f"a_init_range must be positive and ordered, got {a_init_range}")
        self.dim, self.inner, self.n_heads, self.head_dim = dim, inner, n_heads, head_dim
        self.d_state, self.n_groups, self.conv_width = d_state, n_groups, conv_width
        self.chunk_size, self.naive, self.norm_eps = chunk_size, naive, norm_eps
        self.dt_range, self.dt_init_floor = (dt_min, dt_max), dt_init_floor
        self.a_init_range, self.init_seed = a_init_range, init_seed
        self.conv_dim = inner + 2 * n_groups * d_state
        self.in_proj = nn.Linear(dim, inner + self.conv_dim + n_heads, bias=False)
        self.conv_weight = nn.Parameter(torch.empty(self.conv_dim, conv_width))
        self.conv_bias = nn.Parameter(torch.empty(self.conv_dim))
        self.dt_bias = nn.Parameter(torch.empty(n_heads))
        self.A_log = nn.Parameter(torch.empty(n_heads))
        self.D = nn.Parameter(torch.empty(n_heads))
        self.norm_weight = nn.Parameter(torch.empty(inner))
        self.out_proj = mark_residual_out(nn.Linear(inner, dim, bias=False))

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Mamba2's init for the parameters the skeleton does not set (the Linears are set by
        ``LanguageModel.init_weights``):

        ======================= ===================================================
        conv_weight, conv_bias  uniform(+-1/sqrt(W)) (PyTorch's Conv1d default)
        dt_bias                 softplus^-1(dt), dt log-uniform in [dt_min, dt_max],
                                floored at dt_init_floor (so softplus(dt_bias) = dt)
        A_log                   log(uniform(a_init_range))
        D                       ones
        norm_weight             ones
        ======================= ===================================================

        The random draws use a generator seeded by ``init_seed`` (the layer index), not the
        global RNG: ``init_weights`` gives no generator to submodules, and this keeps
        ``build_model(cfg, seed=s)`` reproducible. These few values therefore do not change with
        ``s``; every matrix does.
        """
        dev = self.conv_weight.device
        gen = torch.Generator().manual_seed(0x5EED + self.init_seed)

        def uniform(shape: tuple[int, ...], lo: float, hi: float) -> Tensor:
            return (lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)).to(dev)

        bound = 1.0 / math.sqrt(self.conv_width)
        self.conv_weight.copy_(uniform(tuple(self.conv_weight.shape), -bound, bound))
        self.conv_bias.copy_(uniform((self.conv_dim,), -bound, bound))
        lo, hi = math.log(self.dt_range[0]), math.log(self.dt_range[1])
        dt = torch.exp(uniform((self.n_heads,), lo, hi)).clamp_min(self.dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
        self.A_log.copy_(torch.log(uniform((self.n_heads,), *self.a_init_range)))
        self.D.fill_(1.0)
        self.norm_weight.fill_(1.0)

    # ----------------------------------------------------------------- state
    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Mamba2State:
        """A fresh (all-zero) state for ``batch_size`` sequences."""
        cdt = compute_dtype(dtype)
        conv = torch.zeros(
            batch_size, self.conv_width - 1, self.conv_dim, device=device, dtype=dtype
        )
        ssm = torch.zeros(
            batch_size, self.n_heads, self.head_dim, self.d_state, device=device, dtype=cdt
        )
        return Mamba2State(conv, ssm)

    # --------------------------------------------------------------- forward
    def forward(
        self, x: Tensor, *, state: Mamba2State | None = None
    ) -> tuple[Tensor, Mamba2State | None]:
        """``x: [B, T, D] -> y: [B, T, D]``; with ``state`` continue that sequence."""
        b, T, _ = x.shape
        H, P, G, N, E = self.n_heads, self.head_dim, self.n_groups, self.d_state, self.inner
        z, xbc, dt = self.in_proj(x).split([E, self.conv_dim, H], dim=-1)
        xbc, conv_tail = self._conv(xbc, None if state is None else state.conv)
        xs, Bm, Cm = xbc.split([E, G * N, G * N], dim=-1)
        # dt and A in at least float32: softplus/exp of bf16 values would quantise the decays.
        wdt = torch.promote_types(x.dtype, torch.float32)
        dt = F.softplus(dt.to(wdt) + self.dt_bias.to(wdt))  # [B, T, H]
        A = -torch.exp(self.A_log.to(wdt))  # [H]
        op = naive_ssd if (self.naive or T == 1) else chunk_ssd  # one token: the recurrence step
        y, ssm = op(
            xs.view(b, T, H, P),
            dt,
            A,
            Bm.view(b, T, G, N),
            Cm.view(b, T, G, N),
            self.D,
            None if state is None else state.ssm,
            chunk_size=self.chunk_size,
        )
        y = self._gated_norm(y.reshape(b, T, E), z)
        out = self.out_proj(y)
        return out, (None if state is None else Mamba2State(conv_tail, ssm))

    def _conv(self, xbc: Tensor, tail: Tensor | None) -> tuple[Tensor, Tensor]:
        """Causal depthwise conv + SiLU over ``xbc: [B, T, Cc]``; returns the output and the new
        tail (last ``W - 1`` inputs). ``tail=None`` means a fresh sequence (zero padding)."""
        return short_conv_silu(xbc, self.conv_weight, tail, self.conv_bias)

    def _gated_norm(self, y: Tensor, z: Tensor) -> Tensor:
        """``rmsnorm(y * silu(z)) * weight`` per group of ``E / G`` channels (Mamba2's
        ``RMSNormGated`` with ``norm_before_gate=False``), in at least float32."""
        wdt = torch.promote_types(y.dtype, torch.float32)
        g = (y.to(wdt) * F.silu(z.to(wdt))).unflatten(-1, (self.n_groups, -1))
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.norm_eps)
        return (g.flatten(-2) * self.norm_weight.to(wdt)).to(z.dtype)

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per token: projections, conv and the chunked SSD's matmuls."""
        H, P, G, N = self.n_heads, self.head_dim, self.n_groups, self.d_state
        cs = min(self.chunk_size, seq_len)
        proj = 2 * self.dim * (self.inner + self.conv_dim + H) + 2 * self.inner * self.dim
        conv = 2 * self.conv_dim * self.conv_width
        # C B^T per group, (C B^T * L) x per head, chunk states and state-to-output per head
        ssd = 2 * cs * G * N + 2 * cs * H * P + 4 * H * P * N
        return proj + conv + ssd
