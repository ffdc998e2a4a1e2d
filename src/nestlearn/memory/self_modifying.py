"""Self-modifying Titans as a token mixer: ``x: [B, T, D] -> y: [B, T, D]`` (Hope's first half).

Nested Learning (arXiv 2512.24695) §8.1-8.3, eqs. 83-96. Axis legend: B batch, T tokens, D model
width, H heads, F = D / H head dim.

Layer::

    u           = silu(causal_dwconv_4(W_in x))           memory input x_m [+ fixed q, k, v] (§8.3);
                                                          with per_memory_conv one conv (own
                                                          filters) per projection memory: x_box
    k, v, eta, alpha (and q if adaptive) = M_box(x_box)   projection memories (eqs. 84-85)
    q           = x_m-independent fixed projection W_q x  (the default, §8.1 "the only
                                                           non-adaptive projection")
    m_t         = momentum_max sigmoid(w_m x_t + b_m)     momentum gate (Table 6 implies one;
                                                          capped at 0.5, fidelity HOPE-4)
    o, state    = chunk_selfmod_titans(...)               every M_box and M_memory learn in context
                                                          with DGD + weight decay (eq. 88)
    y           = W_o (rmsnorm_head(o) * sigmoid(W_g x))  output norm + gate (Titans §4.4)

Every memory is a residual 2-layer MLP per head ``M(z) = z + W_1 s(W_0 z)`` (eq. 89) whose
initial weights are outer-loop parameters, expanded over the batch so that each sequence starts
from them and the outer gradient flows through every unrolled inner update (meta-learned initial
states, §8.1). ``q`` and ``k`` are l2-normalised inside the op (§8.3). The inner learning rate is
``eta_t = max_lr * sigmoid(.)``; with the default strong-write rule (``exact_output``: each
memory's output layer is an exact, normalised per-token delta rule inside its chunk;
``hidden_chunk``: hidden layers advance once per chunk, rows kept at their norms) ``max_lr = 0.5``
trains stably and writes hard enough for recall (docs/fidelity.md HOPE-4); the retention is
``1 - alpha_t`` with ``alpha_t = sigmoid(.)`` near 0.001 at init.

Ablations of Table 6 are constructor switches (``optimizer="gd"``, ``momentum=False``,
``weight_decay=False``, ``adaptive_k=False``, ``adaptive_v=False``, ``adaptive_q=True``); each one
changes only the computation it names (tests/memory/test_self_modifying.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nestlearn.memory.base import (
    ChunkLoopMemory,
    check_inner_rule,
    gated_readout,
    readout_params,
    stacked_params,
)
from nestlearn.ops.conv import causal_depthwise_conv
from nestlearn.ops.recompute import DEFAULT_RECOMPUTE_GROUP, check_recompute_group
from nestlearn.ops.selfmod import (
    PROJECTIONS,
    SelfModState,
    chunk_selfmod_titans,
    naive_selfmod_titans,
    project,
)
from nestlearn.ops.selfmod.common import gradient_point
from nestlearn.ops.titans import TitansState, memory_forward
from nestlearn.ops.titans.common import read_weights
from nestlearn.utils.dtypes import compute_dtype
from nestlearn.utils.init import uniform_
from nestlearn.utils.state import detach_fields

__all__ = ["SelfModifyingOptions", "SelfModifyingTitans", "SelfModifyingTitansState"]


class SelfModifyingTitansState(NamedTuple):
    """Per-sequence state of :class:`SelfModifyingTitans`.

    Attributes:
        inner: the memories (:class:`~nestlearn.ops.selfmod.SelfModState`), or ``None`` for a fresh
            sequence, which starts from the meta-learned initial memories.
        conv: ``[B, conv_size - 1, P]`` last inputs of the short conv, or ``None`` (zeros).
    """

    inner: SelfModState | None = None
    conv: Tensor | None = None

    def detach(self) -> SelfModifyingTitansState:
        """Cut the autograd history (truncated backprop through time)."""
        return SelfModifyingTitansState(*detach_fields(self))


@dataclass
class SelfModifyingOptions:
    """Options of :class:`SelfModifyingTitans`, declared once: the ``hope`` family's
    ``model.mixer`` options are these fields plus ``cms`` (``HopeOptions`` extends this class).

    Table 6's ablations are switches here (``optimizer="gd"``, ``momentum=False``,
    ``weight_decay=False``, ``adaptive_k=False``, ``adaptive_v=False``, ``adaptive_q=True``).
    """

    expansion: float = 1.0
    """Hidden width of every memory MLP as a multiple of the head dim."""
    activation: str = "silu"
    """Memory activation: silu, gelu or relu."""
    optimizer: str = "dgd"
    """Inner optimizer: ``dgd`` (Delta GD with weight decay, eq. 88) or ``gd`` (w/o DGD)."""
    momentum: bool = True
    """Inner momentum (False = Table 6 "w/o momentum")."""
    weight_decay: bool = True
    """Retention gate alpha and its memory (False = Table 6 "w/o weight decay": retention 1)."""
    adaptive_k: bool = True
    """Keys from a self-modifying memory (False = "w/o inner-projection k": fixed W_k)."""
    adaptive_v: bool = True
    """Values from a self-modifying memory (False = "w/o inner-projection v")."""
    adaptive_q: bool = False
    """Queries from a self-modifying memory (§8.1 keeps q fixed; Table 6 ablates it)."""
    chunk_size: int = 32
    """Chunk of the main memory M_memory (gradients at the previous chunk's final state)."""
    proj_chunk_size: int = 64
    """Chunk of the projection memories M_k, M_v, M_eta, M_alpha (and M_q) ("two different
    values of chunk sizes", §8.2)."""
    max_lr: float = 0.5
    """Upper bound of the inner learning rate eta_t = max_lr * sigmoid(.) (max_lr / 2 at init).
    With ``exact_output`` a write removes up to ``2 eta`` of its key's error; with both
    ``exact_output`` and ``hidden_chunk`` off use about 0.002 (docs/fidelity.md HOPE-4)."""
    momentum_max: float = 0.5
    """Upper bound of the inner momentum gate ``m_t = momentum_max * sigmoid(.)``
    (docs/fidelity.md HOPE-4)."""
    conv_size: int = 4
    """Width of the causal depthwise conv on the memory input (§8.3: 4; 0 disables)."""
    exact_output: bool = True
    """Every memory's output layer follows the exact per-token recurrence inside its chunk (a
    normalised delta rule over the hidden features; ``ops/titans`` README): strong writes that
    stay stable (docs/fidelity.md HOPE-4, TITANS-1)."""
    hidden_chunk: bool = True
    """Every memory's hidden layer is read at its chunk start and updated once per chunk (mean
    gradient), each row kept at its norm."""
    lr_init: float | None = None
    """Inner learning rate at init (``None`` = ``max_lr / 2``); the gate learns from there."""
    proj_lr_scale: float = 0.1
    """The projection memories (k, v, eta, alpha) learn at this fraction of the main memory's
    inner rate (0 = they never change in context). At 1.0 their strong writes made k, v, eta
    and alpha shift every chunk and cost 0.12 in validation loss (docs/fidelity.md HOPE-4)."""
    retain_to_init: bool = True
    """Every memory's hidden layer retains toward its meta-learned initial weights instead of
    toward zero (needs ``hidden_chunk``), so a long stream cannot drift it (docs/fidelity.md
    TITANS-2)."""
    per_memory_conv: bool = True
    """Each projection memory reads the memory input through its own causal conv (needs
    ``conv_size > 0``), so M_k and M_v see different inputs (e.g. the previous and the current
    token); False shares one conv, which leaves k and v nearly equal at init and MQAR at 30%
    (docs/fidelity.md HOPE-11)."""
    naive: bool = False
    """Run the per-token reference op (tests and ``bench --naive`` only)."""
    recompute_group: int | None = DEFAULT_RECOMPUTE_GROUP
    """Chunk-group recompute in training (``chunk_selfmod_titans``): one state snapshot per this
    many chunks is kept for backward, which re-runs each group (same numbers, less memory, about
    one more forward of the loops; docs/benchmarks.md "Training memory"). ``0`` or ``None``
    keeps every chunk's tensors. In the Hope families it is also the CMS's default
    (``cms.recompute_group``, when given, sets the CMS's own). The naive reference op keeps
    everything."""

    def __post_init__(self) -> None:
        check_recompute_group(self.recompute_group)
        if self.chunk_size < 1 or self.proj_chunk_size < 1:
            raise ValueError(
                f"chunk_size and proj_chunk_size must be >= 1, got {self.chunk_size}, "
                f"{self.proj_chunk_size}; try 32 and 64"
            )
        check_inner_rule(self, max_lr_hint=0.5)
        if not 0.0 <= self.proj_lr_scale <= 1.0:
            raise ValueError(f"proj_lr_scale must be in [0, 1], got {self.proj_lr_scale}")
        if self.optimizer not in ("gd", "dgd"):
            raise ValueError(f"optimizer must be 'gd' or 'dgd', got {self.optimizer!r}")
        if self.activation not in ("silu", "gelu", "relu"):
            raise ValueError(
                f"activation must be silu, gelu or relu, got {self.activation!r}; try silu"
            )
        if self.per_memory_conv and self.conv_size == 0:
            raise ValueError("per_memory_conv needs conv_size > 0; try conv_size=4")


class SelfModifyingTitans(ChunkLoopMemory):
    """Self-modifying Titans (Hope's sequence mixer) with the house ``forward(x, *, state)``.

    Args:
        dim: model width ``D``; n_heads: heads ``H`` (``F = D / H``).
        options: the layer's options (:class:`SelfModifyingOptions`, fields documented there);
            or give them as keywords (``SelfModifyingTitans(64, 4, chunk_size=16)``), not both.
        init_seed: seed of this layer's own init (the layer index).

    Construction (options or keywords), the shared inner-rule attributes, ``init_state``,
    ``set_memory_frozen`` (frozen: the memories are read as they are, nothing is written) and
    the chunk-loop markers (``supports_naive``: ``options.naive`` runs the per-token reference
    op) are :class:`~nestlearn.memory.base.ChunkLoopMemory`'s.
    """

    options_class = SelfModifyingOptions
    state_class = SelfModifyingTitansState

    def _build(self, o: SelfModifyingOptions) -> None:
        dim, n_heads, F_ = self.dim, self.n_heads, self.head_dim
        self.proj_lr_scale, self.proj_chunk_size = o.proj_lr_scale, o.proj_chunk_size
        expansion, conv_size, momentum = o.expansion, o.conv_size, o.momentum
        weight_decay = self.weight_decay = o.weight_decay
        adaptive = {"k": o.adaptive_k, "v": o.adaptive_v, "q": o.adaptive_q, "eta": True}
        adaptive["alpha"] = weight_decay
        self.names: tuple[str, ...] = tuple(p for p in PROJECTIONS if adaptive[p])
        # fixed projections, in channel order after the memory input x_m
        self.fixed: tuple[str, ...] = tuple(p for p in ("q", "k", "v") if not adaptive[p])
        P = dim * (1 + len(self.fixed))
        self.w_in = nn.Linear(dim, P, bias=False)
        # per-memory conv: the memory input is convolved once per projection memory, each with its
        # own filter, so e.g. M_k can read the previous token and M_v the current one
        self.n_x = len(self.names) if o.per_memory_conv else 1
        Pc = dim * (self.n_x + len(self.fixed))
        self.conv_weight = nn.Parameter(torch.empty(conv_size, Pc)) if conv_size > 0 else None
        self.w_mom = nn.Linear(dim, n_heads, bias=False) if momentum else None
        # Biases and readouts live outside nn.Linear: the skeleton's init zeroes Linear biases.
        self.mom_bias = nn.Parameter(torch.empty(n_heads)) if momentum else None
        self.eta_readout = nn.Parameter(torch.empty(n_heads, F_))
        self.eta_bias = nn.Parameter(torch.empty(n_heads))
        self.alpha_readout = nn.Parameter(torch.empty(n_heads, F_)) if weight_decay else None
        self.alpha_bias = nn.Parameter(torch.empty(n_heads)) if weight_decay else None
        hid = max(1, round(F_ * expansion))
        shapes = [(hid, F_), (F_, hid)]
        n = len(self.names)
        # meta-learned initial memories: projection memories stacked on the head axis
        self.proj_init = stacked_params(n * n_heads, shapes)
        self.mem_init = stacked_params(n_heads, shapes)
        self.out_norm_weight, self.wg, self.wo = readout_params(dim, n_heads)

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Init of the parameters the skeleton does not set (its Linears get ``init_std``):

        ============================ ===================================================
        proj_init, mem_init          normal(0, 1 / sqrt(d_in)) per layer (as Titans' memory:
                                     M(z) ~ z at init, so k ~ v ~ x_m and o ~ q)
        conv_weight                  uniform(-1/sqrt(w), 1/sqrt(w)), torch's Conv1d default
        eta_readout, alpha_readout   zeros: eta = max_lr / 2 and alpha = 0.001 at init; the
                                     readouts then learn which memory features modulate them
        eta_bias / alpha_bias        logit(lr_init / max_lr) / logit(0.001)
        mom_bias                     logit(0.9): m = 0.9 momentum_max at init
        out_norm_weight              ones
        ============================ ===================================================
        """
        gen = torch.Generator().manual_seed(0x5E1F + self.init_seed)
        for w in [*self.proj_init, *self.mem_init]:
            w.copy_(
                torch.randn(w.shape, generator=gen, dtype=torch.float64) / math.sqrt(w.shape[-1])
            )
        if self.conv_weight is not None:
            uniform_(self.conv_weight, 1.0 / math.sqrt(self.conv_size), gen)
        self.eta_readout.zero_()
        self.eta_bias.fill_(math.log(self.lr_init / (self.max_lr - self.lr_init)))
        if self.alpha_readout is not None and self.alpha_bias is not None:
            self.alpha_readout.zero_()
            self.alpha_bias.fill_(math.log(0.001 / 0.999))
        if self.mom_bias is not None:
            self.mom_bias.fill_(math.log(0.9 / 0.1))
        self.out_norm_weight.fill_(1.0)

    # ----------------------------------------------------------------- state
    def _initial_inner(self, batch: int) -> SelfModState:
        # expand (a view): every sequence starts from the same meta-learned weights
        def st(ps: nn.ParameterList) -> TitansState:
            return TitansState(tuple(p.expand(batch, *p.shape) for p in ps))

        return SelfModState(st(self.proj_init), st(self.mem_init))

    def _prior(self, batch: int) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]] | None:
        """What the hidden layers retain toward: the meta-learned memories (``retain_to_init``)."""
        if not self.retain_to_init:
            return None
        init = self._initial_inner(batch)
        return init.proj.weights, init.memory.weights

    # --------------------------------------------------------------- forward
    def forward(
        self, x: Tensor, *, state: SelfModifyingTitansState | None = None
    ) -> tuple[Tensor, SelfModifyingTitansState | None]:
        """``x: [B, T, D] -> y: [B, T, D]``; with ``state`` continue that sequence (and return it)."""
        B, T, D = x.shape
        H, F_ = self.n_heads, self.head_dim
        inner, tail = state if state is not None else (None, None)
        u = self.w_in(x)
        new_tail = None
        if self.n_x > 1:  # one copy of the memory input per projection memory's conv
            u = torch.cat([u[..., :D].repeat(1, 1, self.n_x), u[..., D:]], dim=-1)
        if self.conv_weight is not None:
            u, new_tail = causal_depthwise_conv(u, self.conv_weight, tail)
        parts = F.silu(u).view(B, T, self.n_x + len(self.fixed), H, F_)
        xm = parts[:, :, : self.n_x] if self.n_x > 1 else parts[:, :, 0]
        fixed = dict(zip(self.fixed, parts[:, :, self.n_x :].unbind(2)))
        wdt = torch.promote_types(x.dtype, torch.float32)
        mom = None
        if self.w_mom is not None and self.mom_bias is not None:
            mom = self.momentum_max * torch.sigmoid(self.w_mom(x).to(wdt) + self.mom_bias.to(wdt))
        eta_ro = (self.eta_readout, self.eta_bias)
        alpha_ro = None
        if self.alpha_readout is not None and self.alpha_bias is not None:
            alpha_ro = (self.alpha_readout, self.alpha_bias)
        if inner is None:
            inner = self._initial_inner(B)
        kw = dict(
            names=self.names, eta_readout=eta_ro, alpha_readout=alpha_ro,
            q=fixed.get("q"), k=fixed.get("k"), v=fixed.get("v"),
            max_lr=self.max_lr, activation=self.activation,
        )  # fmt: skip
        if self.memory_frozen:
            o = self._read_only(xm, inner, kw)
        else:
            kw |= dict(
                momentum=mom, chunk_size=self.chunk_size, proj_chunk_size=self.proj_chunk_size,
                optimizer=self.optimizer, exact_output=self.exact_output,
                hidden_chunk=self.hidden_chunk, hidden_prior=self._prior(B),
                proj_lr_scale=self.proj_lr_scale,
            )  # fmt: skip
            if self.naive:
                o, inner = naive_selfmod_titans(xm, inner, **kw)
            else:
                o, inner = chunk_selfmod_titans(
                    xm, inner, **kw, recompute_group=self.recompute_group
                )
        y = gated_readout(o, x, self.out_norm_weight, self.wg, self.wo)
        if state is None:
            return y, None
        return y, SelfModifyingTitansState(inner, new_tail)

    def _read_only(self, xm: Tensor, inner: SelfModState, kw: dict) -> Tensor:
        """Frozen memories: project at the projection memories' gradient point, read M_memory."""
        cdt = compute_dtype(xm)
        fixed = {n: (None if kw[n] is None else kw[n].to(cdt)) for n in ("q", "k", "v")}
        p = project(
            tuple(w.to(cdt) for w in gradient_point(inner.proj)), xm.to(cdt), kw["names"],
            eta_readout=kw["eta_readout"], alpha_readout=kw["alpha_readout"],
            max_lr=kw["max_lr"], activation=kw["activation"], **fixed,
        )  # fmt: skip
        Wm = tuple(w.to(cdt) for w in read_weights(inner.memory, self.hidden_chunk))
        o = memory_forward(Wm, p.q.transpose(1, 2), kw["activation"]).transpose(1, 2)
        return o.to(xm.dtype)

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per token: projections, memory forwards, inner updates and the read."""
        D, H = self.dim, self.n_heads
        proj = 2 * D * (self.w_in.out_features + 2 * D + (H if self.w_mom is not None else 0))
        per_mem = sum(2 * p.shape[-1] * p.shape[-2] for p in self.mem_init)  # one MLP forward
        n = len(self.names)
        # projection memories: forward on x and on v, inner fwd + bwd (3), chunk-end update (1)
        # main memory: target fwd, inner fwd + bwd, read (about 2 with the dual form), update
        # (momentum is a scalar-coefficient recurrence over the chunk's terms: no extra matmul;
        # checked against torch.utils.flop_counter on hope-tiny: 43.9 M counted vs 48.2 M
        # measured training FLOPs per token at T = 512, the rest being elementwise-heavy glue)
        mem = per_mem * (n * (2 + 3 + 1) + (1 + 3 + 2 + 1))
        return proj + H * mem
