"""A token mixer built from a :class:`~nestlearn.ops.nested.MemorySpec`: ``x: [B, T, D] -> [B, T, D]``.

Axis legend: B batch, T tokens, D model width, H heads, F = D / H head dim.

The layer is the MIRAS / Titans recipe around one memory level (MIRAS §5.4, Titans §4.4, NL §8.3)::

    q, k, v   = silu(causal_dwconv_4(W_qkv x))               short conv, width 4
    q, k      = q / ||q||, k / ||k||                           l2-normalised per head
    lr_t      = max_lr * sigmoid(w x_t + b)                    inner learning rate   [B, T, H]
    a_t       = sigmoid(w x_t + b)      (retention != none)    retention gate, ~0.999 at init
    m_t       = momentum_max * sigmoid(w x_t + b)  (momentum)  momentum gate
    delta_t   = softplus(w x_t + b)     (objective = huber)    Huber radius, ~2 at init
    o, state  = nested_memory(spec, q, k, v, lr, a, m, delta; M_0)
    y         = W_o (rmsnorm_head(o) * sigmoid(W_g x))          output norm + gate

``M_0`` (per head) and, with ``norm='layernorm'``, the memory's LayerNorm affine are outer-loop
parameters: every sequence starts from ``M_0`` and the outer gradient flows through every unrolled
inner update (meta-learned initial state, NL §8.1). For ``lq`` / ``kl`` retention ``M_0`` is the
accumulator / logits the weights are projected from.

State (:class:`NestedMixerState`): the memory (:class:`~nestlearn.ops.nested.NestedState`, with the
mid-chunk anchor and offset) and the conv tail, so prefill + token-by-token decode equals one call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nestlearn.memory.base import gated_readout, qkv_heads, readout_params, stacked_params
from nestlearn.ops.nested import (
    BACKENDS,
    MemorySpec,
    NestedState,
    init_params,
    nested_memory,
    param_shapes,
    project,
)
from nestlearn.utils.config import options_or_keywords
from nestlearn.utils.init import uniform_
from nestlearn.utils.state import detach_fields

__all__ = ["NestedMixer", "NestedMixerState"]


class NestedMixerState(NamedTuple):
    """Per-sequence state of a :class:`NestedMixer`.

    Attributes:
        inner: the memory level's state, or ``None`` for a fresh sequence (starts from ``M_0``).
        conv: ``[B, conv_size - 1, 3 D]`` the last conv inputs, or ``None`` (zeros).
    """

    inner: NestedState | None = None
    conv: Tensor | None = None

    def detach(self) -> NestedMixerState:
        """Cut the autograd history (truncated backprop through time)."""
        return NestedMixerState(*detach_fields(self))


@dataclass
class NestedMixerOptions:
    """Options of :class:`NestedMixer` besides its spec, declared once: the nested families'
    layer options (``NestedOptions``, which adds ``naive``) are these fields."""

    max_lr: float = 0.1
    """Upper bound of the inner learning rate ``lr = max_lr * sigmoid(.)``. Measured at the
    ``nestlearn synthetic --task mqar`` default recipe: 0.01 -> 0.1 took Yaad from 27% to 100%
    and DLA from 18% to 45%, and 40 AdamW steps (lr 3e-3) of each MIRAS/DLA tiny preset stayed
    stable at 0.1 (the Titans memory, without the LayerNorm, uses 0.002)."""
    momentum_max: float = 0.5
    """Upper bound of the momentum gate (specs with ``momentum=True``)."""
    retain_init: float = 0.999
    """Retention gate at init (specs with a retention), in ``(0, 1)``."""
    delta_init: float = 2.0
    """Huber radius at init (``objective='huber'``), ``> 0``."""
    conv_size: int = 4
    """Width of the causal depthwise conv after the q/k/v projection (0 disables it)."""
    backend: str = "auto"
    """``auto`` (dedicated op when one covers the spec), ``generic``, ``dedicated`` or ``naive``
    (:func:`~nestlearn.ops.nested.nested_memory`)."""

    def __post_init__(self) -> None:
        if not self.max_lr > 0:
            raise ValueError(f"max_lr must be > 0, got {self.max_lr}; try 0.1")
        if not 0.0 < self.momentum_max <= 1.0:
            raise ValueError(f"momentum_max must be in (0, 1], got {self.momentum_max}; try 0.5")
        if not 0.0 < self.retain_init < 1.0:
            raise ValueError(f"retain_init must be in (0, 1), got {self.retain_init}; try 0.999")
        if not self.delta_init > 0:
            raise ValueError(f"delta_init must be > 0, got {self.delta_init}; try 2.0")
        if self.conv_size < 0:
            raise ValueError(f"conv_size must be >= 0, got {self.conv_size}; try 4")
        if self.backend not in BACKENDS:
            raise ValueError(
                f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}"
            )


class NestedMixer(nn.Module):
    """One nested memory level as a token mixer with the house ``forward(x, *, state=None)``.

    Args:
        dim: model width ``D``; n_heads: heads ``H`` (``F = D / H``).
        spec: the memory level (architecture, attentional bias, retention, algorithm, chunk).
        options: the layer's options (:class:`NestedMixerOptions`, fields documented there);
            or give them as keywords (``NestedMixer(64, 4, spec, max_lr=0.05)``), not both.
        init_seed: seed of this layer's own init (``M_0``, conv), e.g. the layer index.
    """

    supports_naive = True
    """``backend="naive"`` runs the per-token reference loop (``nestlearn bench --naive``)."""

    def __init__(
        self,
        dim: int,
        n_heads: int,
        spec: MemorySpec,
        options: NestedMixerOptions | None = None,
        *,
        init_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.options = o = options_or_keywords(NestedMixerOptions, options, kwargs)
        max_lr, momentum_max, retain_init = o.max_lr, o.momentum_max, o.retain_init
        delta_init, conv_size, backend = o.delta_init, o.conv_size, o.backend
        if dim % n_heads:
            raise ValueError(f"dim={dim} must be divisible by n_heads={n_heads}")
        F_ = dim // n_heads
        spec.layer_shapes(F_, F_)  # fail at construction on a shape the spec cannot take
        self.dim, self.n_heads, self.head_dim, self.spec = dim, n_heads, F_, spec
        self.max_lr, self.momentum_max = max_lr, momentum_max
        self.retain_init, self.delta_init = retain_init, delta_init
        self.conv_size, self.backend, self.init_seed = conv_size, backend, init_seed
        # the gates this spec uses, in a fixed order; each is one logit per head and token
        self.gate_names = ["lr"]
        if spec.retention != "none":
            self.gate_names.append("retain")
        if spec.momentum:
            self.gate_names.append("momentum")
        if spec.objective == "huber":
            self.gate_names.append("delta")
        P = 3 * dim
        self.wqkv = nn.Linear(dim, P, bias=False)
        self.conv_weight = nn.Parameter(torch.empty(conv_size, P)) if conv_size > 0 else None
        self.wgates = nn.Linear(dim, len(self.gate_names) * n_heads, bias=False)
        # biases live here, not in wgates: the model's init_weights zeroes Linear biases
        self.gate_bias = nn.Parameter(torch.empty(len(self.gate_names), n_heads))
        self.mem_init = stacked_params(n_heads, param_shapes(spec, F_, F_))
        if spec.norm == "layernorm":
            self.mem_norm_weight = nn.Parameter(torch.empty(n_heads, F_))
            self.mem_norm_bias = nn.Parameter(torch.empty(n_heads, F_))
        else:
            self.mem_norm_weight = self.mem_norm_bias = None
        self.out_norm_weight, self.wg, self.wo = readout_params(dim, n_heads)
        if self.gate_bias.device.type != "meta":
            self.reset_parameters()

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Init of what the model skeleton does not set (its Linears get ``init_std``):

        =================== =========================================================================
        mem_init            :func:`~nestlearn.ops.nested.init_params` (mlp ``normal(0, 1/sqrt(d_in))``,
                            matrix / vector zeros, ``kl`` mlp logits ``normal(0, 1)``, biases zero)
        conv_weight         uniform(-1/sqrt(w), 1/sqrt(w)) (torch's Conv1d default)
        gate_bias           lr: 0 (``max_lr / 2``); retain: logit(retain_init); momentum: logit(0.9);
                            delta: softplus^-1(delta_init)
        mem_norm_*          ``1 / sqrt(F)`` / zeros (the LN output then has norm ~1, as the keys)
        out_norm_weight     ones
        =================== =========================================================================

        Draws use a generator seeded by ``init_seed``, so the result does not depend on the global
        RNG.
        """
        gen = torch.Generator().manual_seed(0x6E57 + self.init_seed)
        for p, init in zip(self.mem_init, init_params(self.spec, self.head_dim, self.head_dim,
                                                      self.n_heads, generator=gen)):  # fmt: skip
            p.copy_(init)
        if self.conv_weight is not None:
            uniform_(self.conv_weight, 1.0 / math.sqrt(self.conv_size), gen)
        init = {
            "lr": 0.0,
            "retain": math.log(self.retain_init / (1.0 - self.retain_init)),
            "momentum": math.log(0.9 / 0.1),
            "delta": self.delta_init + math.log(-math.expm1(-self.delta_init)),
        }
        for i, name in enumerate(self.gate_names):
            self.gate_bias[i].fill_(init[name])
        if self.mem_norm_weight is not None and self.mem_norm_bias is not None:
            # LN output of norm ~1 like the unit keys: with weight 1 its norm is sqrt(F), no
            # value can be matched and the inner loop never settles (measured, 40 AdamW steps at
            # d=64: Moneta 3.42 -> 3.20, Memora 3.42 -> 3.25-3.37, Yaad 3.13 -> 3.05 final loss)
            self.mem_norm_weight.fill_(self.head_dim**-0.5)
            self.mem_norm_bias.fill_(0.0)
        self.out_norm_weight.fill_(1.0)

    def init_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> NestedMixerState:
        """A fresh state: the next call starts from ``M_0`` and a zero conv tail."""
        return NestedMixerState(None, None)

    def initial_memory(self, batch: int) -> NestedState:
        """``M_0`` expanded over the batch (a view: every sequence's outer gradient sums into it)."""
        ps = tuple(p.expand(batch, *p.shape) for p in self.mem_init)
        if self.spec.mirror:
            return NestedState(project(self.spec, ps), ps)
        return NestedState(ps)

    # --------------------------------------------------------------- forward
    def forward(
        self, x: Tensor, *, state: NestedMixerState | None = None
    ) -> tuple[Tensor, NestedMixerState | None]:
        """``x: [B, T, D] -> y: [B, T, D]``; with ``state`` continue that sequence (and return it)."""
        B, T, _ = x.shape
        H = self.n_heads
        inner, tail = state if state is not None else (None, None)
        q, k, v, new_tail = qkv_heads(self.wqkv(x), self.conv_weight, tail, H)
        wdt = torch.promote_types(x.dtype, torch.float32)  # gates at least in float32
        g = self.wgates(x).to(wdt).view(B, T, len(self.gate_names), H) + self.gate_bias.to(wdt)
        gates = dict(zip(self.gate_names, g.unbind(2)))
        lr = self.max_lr * torch.sigmoid(gates["lr"])
        retain = torch.sigmoid(gates["retain"]) if "retain" in gates else None
        mom = self.momentum_max * torch.sigmoid(gates["momentum"]) if "momentum" in gates else None
        delta = F.softplus(gates["delta"]) if "delta" in gates else None
        if inner is None:
            inner = self.initial_memory(B)
        o, inner = nested_memory(
            self.spec, q, k, v, lr, retain, mom, delta, inner,
            norm_weight=self.mem_norm_weight, norm_bias=self.mem_norm_bias, backend=self.backend,
        )  # fmt: skip
        assert o is not None
        y = gated_readout(o, x, self.out_norm_weight, self.wg, self.wo, cast=True)
        return y, (NestedMixerState(inner, new_tail) if state is not None else None)

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per token: projections plus the memory's write (fwd + bwd), read and
        chunk-end update, ~5 passes over each weight, plus the ``C x C`` dual-form terms."""
        D, H, C = self.dim, self.n_heads, min(self.spec.chunk_size, seq_len)
        proj = 2 * D * (3 * D + len(self.gate_names) * H + 2 * D)
        mem = 0
        for s in param_shapes(self.spec, self.head_dim, self.head_dim):
            size = math.prod(s)
            mem += 2 * 5 * size + 2 * C * sum(s)
        return proj + H * mem
