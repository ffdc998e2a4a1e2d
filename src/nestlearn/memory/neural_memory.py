"""Titans neural long-term memory (LMM) as a token mixer: ``x: [B, T, D] -> y: [B, T, D]``.

Axis legend: B batch, T tokens, D model width, H heads, F head dim, P = 3 H F (q, k, v channels).

Layer (Titans arXiv 2501.00663 §3 and §4.4; Nested Learning arXiv 2512.24695 §8, eqs. 86-93)::

    q, k, v   = silu(causal_dwconv_4(W_qkv x))            depthwise causal conv, width 4 (§4.4)
    q, k      = q / ||q||, k / ||k||                        l2-normalised per head (§4.4, NL §8.3)
    theta_t   = max_lr * sigmoid(w_theta x_t + b_theta)     inner learning rate        [B, T, H]
    eta_t     = sigmoid(w_eta x_t + b_eta)                  momentum ("past surprise")  [B, T, H]
    alpha_t   = sigmoid(w_alpha x_t + b_alpha)              forgetting / weight decay   [B, T, H]
    o, M      = chunk_titans(q, k, v, theta, eta, alpha; M_0)        (ops/titans, eqs. 12-14)
    y         = W_o (rmsnorm_head(o) * sigmoid(W_g x))       output norm + gate (§4.4)

Strong writes that stay stable (docs/fidelity.md TITANS-1, measured there):

* ``exact_output=True`` (default): inside a chunk the memory's output layer follows the exact
  per-token recurrence (its gradient at its running weights, a delta rule over the hidden features
  solved with one triangular system per chunk), with its step normalised by the features' energy,
  ``theta / max(1, ||z||^2)``. A key written several times in one chunk is written once, not
  ``C`` times, so ``theta`` can be large: with ``max_lr = 1`` one write removes up to the whole
  error on its key (``2 theta`` of it), where the chunk-start rule needed ``theta <= 0.002`` to
  train and then wrote almost nothing (MQAR 18.8% -> 100%).
* ``hidden_chunk=True`` (default): the hidden layers are read at the chunk start and updated once
  per chunk with the mean gradient, each row rescaled to its chunk-start norm (as LaCT). Their
  in-chunk, chunk-start gradients summed over correlated keys were what diverged (titans-tiny NaN
  at step 3 with ``max_lr = 0.5``); normalised, they cannot grow or decay over any stream.
* ``eta`` and ``alpha`` multiply the previous momentum / weights every token, so both are
  sigmoids (``1 - alpha`` is the retention): ``eta = momentum_max * sigmoid(.)`` (0.45 at init,
  capped at 0.5) and ``alpha ~ 0.001`` at init. The heavy-ball recurrence of the exact output layer
  is stable for ``2 theta < 2 (1 + eta)``, which ``theta <= 1`` satisfies.
* With both options off the op is the plain chunk-start rule (TTT / Titans mini-batch GD): its
  chunk of ``C`` writes multiplies the error on the chunk's keys by ``I - 2 sum_s theta_s k_s
  k_s^T``, which diverges unless ``theta`` is about ``1 / C`` or below (``max_lr = 0.002`` was
  that default, nearly inert).

The memory's initial weights ``M_0`` (per head) are outer-loop parameters: each sequence starts from
``M_0`` expanded over the batch and the outer gradient flows back through every unrolled inner update
(meta-learned initial state, NL §8.1). Momentum starts at zero.

State (:class:`NeuralMemoryState`): the memory weights and momentum, and mid-chunk the chunk's
anchor weights and offset (all inside ``TitansState``), plus the conv tail (last 3 conv inputs). A
pending partial chunk needs no token buffer: the anchor weights are enough to continue it exactly,
so decoding is O(1) per token and prefill + token-by-token decode equals one call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from nestlearn.memory.base import (
    ChunkLoopMemory,
    check_inner_rule,
    gated_readout,
    qkv_heads,
    readout_params,
    stacked_params,
)
from nestlearn.ops.recompute import DEFAULT_RECOMPUTE_GROUP, check_recompute_group
from nestlearn.ops.titans import TitansState, chunk_titans, naive_chunk_titans
from nestlearn.ops.titans.common import memory_forward, read_weights
from nestlearn.utils.dtypes import compute_dtype
from nestlearn.utils.init import uniform_
from nestlearn.utils.state import detach_fields

__all__ = ["NeuralMemory", "NeuralMemoryOptions", "NeuralMemoryState"]


class NeuralMemoryState(NamedTuple):
    """Per-sequence state of a :class:`NeuralMemory`.

    Attributes:
        inner: the op state (weights ``[B, H, o, i]`` per memory layer, momentum, anchor, offset),
            or ``None`` for a fresh sequence, which starts from the learned ``M_0``.
        conv: ``[B, conv_size - 1, 3 H F]`` last inputs of the causal conv, or ``None`` (zeros).
    """

    inner: TitansState | None = None
    conv: Tensor | None = None

    def detach(self) -> NeuralMemoryState:
        """Cut the autograd history (truncated backprop through time)."""
        return NeuralMemoryState(*detach_fields(self))


@dataclass
class NeuralMemoryOptions:
    """Options of :class:`NeuralMemory`, declared once: the ``titans`` family's ``model.mixer``
    options are these fields (``TitansOptions``), and the MAC / MAG / MAL families add theirs."""

    memory: str = "mlp"
    """``mlp`` (residual MLP memory, Titans' deep memory, NL eq. 89) or ``linear`` (matrix
    memory)."""
    depth: int = 2
    """Layers of the MLP memory (>= 2)."""
    expansion: float = 2.0
    """Hidden width of the MLP memory as a multiple of the head dim."""
    activation: str = "silu"
    """Memory activation: silu, gelu or relu."""
    optimizer: str = "gd"
    """Inner optimizer: ``gd`` (Titans) or ``dgd`` (Delta Gradient Descent, NL eq. 57/88)."""
    momentum: bool = True
    """Surprise momentum (Titans eq. 13, the gate ``eta``); False is the "w/o momentum"
    ablation."""
    forget: bool = True
    """Forgetting gate ``alpha`` (Titans eq. 14); False is the "w/o weight decay" ablation."""
    chunk_size: int = 64
    """Tokens per chunk: the hidden layers' update period (and, with ``exact_output=false``, the
    span whose gradients are all taken at the chunk's starting weights)."""
    max_lr: float = 1.0
    """Upper bound of the inner learning rate theta = max_lr * sigmoid(.) (max_lr / 2 at init).
    With ``exact_output`` one write removes up to ``2 theta`` of its key's error; keep it <= 1.
    With both ``exact_output`` and ``hidden_chunk`` off use about ``1 / chunk_size`` (0.002 was
    that rule's default; docs/fidelity.md TITANS-1)."""
    momentum_max: float = 0.5
    """Upper bound of the momentum gate eta = momentum_max * sigmoid(.); momentum amplifies the
    inner step by up to ``1 / (1 - eta)``. With 1.0 (eta ~ 0.9 at init) titans-tiny diverged
    (NaN) within 4 AdamW steps at lr 3e-3; capped at 0.5, or without momentum, it trained
    normally (module docstring)."""
    conv_size: int = 4
    """Width of the causal depthwise conv after the q/k/v projection (0 disables it)."""
    exact_output: bool = True
    """Inside a chunk the memory's output layer follows the exact per-token recurrence (a delta
    rule over the hidden features, step normalised by their energy), so strong writes stay
    stable; False = every gradient at the chunk start (docs/fidelity.md TITANS-1)."""
    hidden_chunk: bool = True
    """Hidden layers of the MLP memory are read at the chunk start and updated once per chunk
    with the mean gradient, each row kept at its norm (a linear memory has no hidden layer)."""
    lr_init: float | None = None
    """Inner learning rate at init (``None`` = ``max_lr / 2``); the gate learns from there."""
    retain_to_init: bool = True
    """The hidden layers' retention pulls them toward the meta-learned initial weights M_0
    instead of toward zero (needs ``hidden_chunk``): a long stream cannot drift them away from
    what training saw (docs/fidelity.md TITANS-2)."""
    naive: bool = False
    """Run the naive per-chunk reference op ``naive_chunk_titans`` (tests and ``bench --naive``
    only)."""
    recompute_group: int | None = DEFAULT_RECOMPUTE_GROUP
    """Chunk-group recompute in training (``chunk_titans``): one memory snapshot per this many
    chunks is kept for backward, which re-runs each group (same numbers, less memory, about one
    more forward of the memory; docs/benchmarks.md "Training memory"). ``0`` or ``None`` keeps
    every chunk's tensors. The naive reference op keeps everything."""

    def __post_init__(self) -> None:
        check_recompute_group(self.recompute_group)
        if self.memory not in ("mlp", "linear"):
            raise ValueError(f"memory must be 'mlp' or 'linear', got {self.memory!r}")
        if self.memory == "mlp" and self.depth < 2:
            raise ValueError(
                f"an MLP memory needs depth >= 2, got {self.depth}; or use memory='linear'"
            )
        if self.optimizer not in ("gd", "dgd"):
            raise ValueError(f"optimizer must be 'gd' or 'dgd', got {self.optimizer!r}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}; try 64")
        check_inner_rule(self, max_lr_hint=1.0)


class NeuralMemory(ChunkLoopMemory):
    """Titans long-term memory layer with the house ``forward(x, *, state=None)`` signature.

    Args:
        dim: model width ``D``.
        n_heads: memory heads ``H`` (head dim ``F = D / H``).
        options: the layer's options (:class:`NeuralMemoryOptions`, fields documented there);
            or give them as keywords (``NeuralMemory(64, 4, chunk_size=16)``), not both.
        init_seed: seed of this layer's own random init (``M_0``, conv), see ``reset_parameters``.

    Construction (options or keywords), the shared inner-rule attributes, ``init_state``,
    ``set_memory_frozen`` and the chunk-loop markers (``supports_naive``: ``options.naive`` runs
    the naive per-chunk reference op) are :class:`~nestlearn.memory.base.ChunkLoopMemory`'s.

    Frozen (``set_memory_frozen(True)``), a call reads the state's current weights,
    ``y_t = M(q_t)`` (the op's read with ``theta = 0``, no forgetting and no momentum
    integration), and returns the memory part of the state unchanged: weights, momentum, chunk
    anchor and offset. Only the conv tail, a record of the inputs, advances. ``theta = 0`` alone
    would not do: a non-zero momentum keeps moving the weights (``M_t = M_{t-1} + eta_t
    S_{t-1}``), so the op is bypassed.
    """

    options_class = NeuralMemoryOptions
    state_class = NeuralMemoryState

    def _build(self, o: NeuralMemoryOptions) -> None:
        dim, n_heads, F_ = self.dim, self.n_heads, self.head_dim
        self.memory, self.forget = o.memory, o.forget
        memory, conv_size, expansion, depth = o.memory, o.conv_size, o.expansion, o.depth
        P = 3 * dim
        self.wqkv = nn.Linear(dim, P, bias=False)
        self.conv_weight = nn.Parameter(torch.empty(conv_size, P)) if conv_size > 0 else None
        self.wgates = nn.Linear(dim, 3 * n_heads, bias=False)  # theta, eta, alpha per head
        # Biases live here, not in wgates: the model's init_weights zeroes Linear biases.
        self.gate_bias = nn.Parameter(torch.empty(3, n_heads))
        if memory == "linear":
            shapes = [(F_, F_)]
        else:
            hid = max(1, round(F_ * expansion))
            shapes = [(hid, F_)] + [(hid, hid)] * (depth - 2) + [(F_, hid)]
        # M_0: meta-learned initial memory weights, one set per head, input side first.
        self.mem_init = stacked_params(n_heads, shapes)
        self.out_norm_weight, self.wg, self.wo = readout_params(dim, n_heads)

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Init of the parameters the model skeleton does not set (its Linears get ``init_std``):

        ============================ ===================================================
        mem_init[l] (MLP)            normal(0, 1 / sqrt(d_in)). Not larger: the curvature of
                                     ||M(k) - v||^2 in the last layer is 2 ||z||^2 (z its
                                     input), and theta * 2 ||z||^2 must stay below ~2(1 + eta)
                                     for the inner heavy-ball step to contract; with unit-norm
                                     keys this init keeps ||z||^2 ~ 0.5 (measured: std 1 on
                                     the input side diverged at theta = 0.05, hidden 128)
        mem_init[0] (linear memory)  zeros (an empty memory)
        conv_weight                  uniform(-1/sqrt(w), 1/sqrt(w)), w = conv_size
                                     (torch's Conv1d default, as mamba / fla)
        gate_bias                    theta: logit(lr_init / max_lr) (theta = lr_init); eta:
                                     logit(0.9);
                                     alpha: logit(0.001) (eta = 0.9 momentum_max)
        out_norm_weight              ones
        ============================ ===================================================

        Draws use a generator seeded by ``init_seed`` (the layer index), so the result does not
        depend on the global RNG.
        """
        gen = torch.Generator().manual_seed(0x717A + self.init_seed)

        def randn(shape: torch.Size, std: float) -> Tensor:
            return torch.randn(shape, generator=gen, dtype=torch.float64) * std

        for w in self.mem_init:
            if self.memory == "linear":
                w.zero_()
            else:
                w.copy_(randn(w.shape, 1.0 / math.sqrt(w.shape[-1])))
        if self.conv_weight is not None:
            uniform_(self.conv_weight, 1.0 / math.sqrt(self.conv_size), gen)
        self.gate_bias[0].fill_(math.log(self.lr_init / (self.max_lr - self.lr_init)))
        self.gate_bias[1].fill_(math.log(0.9 / 0.1))  # eta = 0.9 * momentum_max at init
        self.gate_bias[2].fill_(math.log(0.001 / 0.999))
        self.out_norm_weight.fill_(1.0)

    # ----------------------------------------------------------------- state
    def _initial_inner(self, batch: int) -> TitansState:
        # expand (a view), so the outer gradient of every sequence sums into M_0
        w = tuple(p.expand(batch, *p.shape) for p in self.mem_init)
        return TitansState(w, None)

    def _prior(self, batch: int) -> tuple[Tensor, ...] | None:
        """The hidden layers' retention target: the meta-learned ``M_0`` (``retain_to_init``)."""
        if not self.retain_to_init or len(self.mem_init) < 2:
            return None
        return self._initial_inner(batch).weights

    # --------------------------------------------------------------- forward
    def forward(
        self, x: Tensor, *, state: NeuralMemoryState | None = None
    ) -> tuple[Tensor, NeuralMemoryState | None]:
        """``x: [B, T, D] -> y: [B, T, D]``; with ``state`` continue that sequence (and return it)."""
        B, T, _ = x.shape
        H = self.n_heads
        inner, tail = state if state is not None else (None, None)
        q, k, v, new_tail = qkv_heads(self.wqkv(x), self.conv_weight, tail, H)
        # gates in float32 at least: the op's scans run there anyway
        wdt = torch.promote_types(x.dtype, torch.float32)
        g = self.wgates(x).to(wdt).view(B, T, 3, H) + self.gate_bias.to(wdt)
        theta = self.max_lr * torch.sigmoid(g[:, :, 0])
        eta = self.momentum_max * torch.sigmoid(g[:, :, 1]) if self.momentum else None
        alpha = torch.sigmoid(g[:, :, 2]) if self.forget else None
        if self.memory_frozen:
            # read-only: the memory part of the state (None = M_0) is returned as it came
            weights = (
                read_weights(inner, self.hidden_chunk)
                if inner is not None
                else self._initial_inner(B).weights
            )
            cdt = compute_dtype(q)
            o = memory_forward(
                tuple(w.to(cdt) for w in weights), q.to(cdt).transpose(1, 2), self.activation
            )  # [B, H, T, F]
            o = o.transpose(1, 2).to(q.dtype)
        else:
            if inner is None:
                inner = self._initial_inner(B)
            kw = dict(
                chunk_size=self.chunk_size, activation=self.activation, optimizer=self.optimizer,
                exact_output=self.exact_output, hidden_chunk=self.hidden_chunk,
                hidden_prior=self._prior(B),
            )  # fmt: skip
            if self.naive:
                o, inner = naive_chunk_titans(q, k, v, theta, eta, alpha, inner, **kw)
            else:
                o, inner = chunk_titans(
                    q, k, v, theta, eta, alpha, inner, **kw, recompute_group=self.recompute_group
                )
        y = gated_readout(o, x, self.out_norm_weight, self.wg, self.wo)
        return y, (NeuralMemoryState(inner, new_tail) if state is not None else None)

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per token: projections plus the chunked memory update and read."""
        D, H, C = self.dim, self.n_heads, self.chunk_size
        proj = 2 * D * (3 * D + 3 * H + 2 * D)
        mem = 0
        for w in self.mem_init:
            o, i = w.shape[-2:]
            # write fwd + bwd (2), read (1, +1 with momentum), chunk-end update (1, +1)
            per = 3 + (2 if self.momentum else 0)
            mem += 2 * per * o * i + 2 * min(C, seq_len) * (o + i)
        return proj + H * mem
