"""What the chunk-loop memory layers share: :class:`~nestlearn.memory.neural_memory.NeuralMemory`
(Titans) and :class:`~nestlearn.memory.self_modifying.SelfModifyingTitans` (Hope's mixer).

Both are built from an options dataclass (or its fields as keywords), take the same inner-rule
options (``max_lr``, ``momentum_max``, ``lr_init``, ``exact_output``, ``hidden_chunk``,
``retain_to_init``, ``conv_size``, ``naive``, ``recompute_group``), project ``x`` through a short
causal conv, and read out through a per-head RMSNorm and a sigmoid gate (Titans §4.4). The
nested-memory mixer (``layers/nested.py``) shares the projection and the readout.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nestlearn.ops.conv import causal_depthwise_conv
from nestlearn.ops.recompute import check_recompute_group
from nestlearn.utils.config import options_or_keywords
from nestlearn.utils.residual import mark_residual_out

__all__ = [
    "ChunkLoopMemory",
    "check_inner_rule",
    "gated_readout",
    "qkv_heads",
    "readout_params",
    "stacked_params",
]


def check_inner_rule(o: Any, max_lr_hint: float) -> None:
    """The checks of the inner-rule options both memories' option classes share (``o`` one of
    them); ``max_lr_hint`` is the value the ``max_lr`` message suggests (the class default)."""
    if not o.max_lr > 0:
        raise ValueError(f"max_lr must be > 0, got {o.max_lr}; try {max_lr_hint}")
    if o.conv_size < 0:
        raise ValueError(f"conv_size must be >= 0, got {o.conv_size}; try 4")
    if not 0.0 < o.momentum_max <= 1.0:
        raise ValueError(f"momentum_max must be in (0, 1], got {o.momentum_max}; try 0.5")
    if o.retain_to_init and not o.hidden_chunk:
        raise ValueError(
            "retain_to_init acts on chunk-level hidden layers; with hidden_chunk=false also "
            "set retain_to_init=false"
        )
    if o.lr_init is not None and not 0.0 < o.lr_init < o.max_lr:
        raise ValueError(f"lr_init must be in (0, max_lr={o.max_lr}), got {o.lr_init}")


def qkv_heads(
    u: Tensor, conv_weight: Tensor | None, tail: Tensor | None, n_heads: int
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """``u = W_qkv x: [B, T, 3 D]`` -> ``q, k, v: [B, T, H, F]`` and the conv's new tail.

    ``silu(causal_dwconv(u))`` split into q, k, v per head, q and k l2-normalised (Titans §4.4);
    without a conv (``conv_weight`` ``None``) the tail is ``None``.
    """
    B, T, P = u.shape
    new_tail = None
    if conv_weight is not None:
        u, new_tail = causal_depthwise_conv(u, conv_weight, tail)
    q, k, v = F.silu(u).view(B, T, 3, n_heads, P // (3 * n_heads)).unbind(2)
    return F.normalize(q, dim=-1), F.normalize(k, dim=-1), v, new_tail


def stacked_params(lead: int, shapes: Iterable[tuple[int, ...]]) -> nn.ParameterList:
    """Uninitialised ``[lead, *shape]`` parameters, one per shape: per-head memory weights
    (``lead = H``), or several memories stacked on the head axis (``lead = n H``)."""
    return nn.ParameterList(nn.Parameter(torch.empty(lead, *s)) for s in shapes)


def readout_params(dim: int, n_heads: int) -> tuple[nn.Parameter, nn.Linear, nn.Linear]:
    """The parameters :func:`gated_readout` reads: the per-head norm weight ``[H, F]`` (set to
    ones by the layer's ``reset_parameters``), ``W_g`` and the residual output ``W_o``."""
    norm_weight = nn.Parameter(torch.empty(n_heads, dim // n_heads))
    wg = nn.Linear(dim, dim, bias=False)
    return norm_weight, wg, mark_residual_out(nn.Linear(dim, dim, bias=False))


def gated_readout(
    o: Tensor, x: Tensor, norm_weight: Tensor, wg: nn.Module, wo: nn.Module, *, cast: bool = False
) -> Tensor:
    """``y = W_o (rmsnorm_head(o) * sigmoid(W_g x))``: ``o: [B, T, H, F]``, ``x: [B, T, D]``.

    ``cast`` rounds the normed heads to ``x.dtype`` before the gate (for an op that returns
    its compute dtype).
    """
    B, T, D = x.shape
    o = F.rms_norm(o, o.shape[-1:]) * norm_weight.to(o.dtype)  # per head
    if cast:
        o = o.to(x.dtype)
    return wo(o.reshape(B, T, D) * torch.sigmoid(wg(x)))


class ChunkLoopMemory(nn.Module):
    """Base of the chunk-loop memory layers: construction and the shared inner-rule options.

    ``Layer(dim, n_heads=4, options=None, *, init_seed=0, **kwargs)``: the options are
    ``options`` (an ``options_class``) or its fields as keywords, not both. The subclass builds
    its parameters in ``_build(options)``; they are then initialised by ``reset_parameters``
    unless built on the meta device.
    """

    options_class: ClassVar[type]
    state_class: ClassVar[type]
    """The layer's state tuple ``(inner, conv)``."""
    supports_naive = True
    """``options.naive`` runs the naive reference op (``nestlearn bench --naive``)."""
    chunk_steps = True
    """Runs a Python loop over chunks (``nestlearn.ops.compiled``): ``train.compile`` compiles
    its chunk steps, not the whole layer, whose unrolled loop would take minutes to compile."""

    def __init__(
        self, dim: int, n_heads: int = 4, options: Any = None, *, init_seed: int = 0, **kwargs: Any
    ) -> None:
        super().__init__()
        o = self.options = options_or_keywords(self.options_class, options, kwargs)
        if dim % n_heads:
            raise ValueError(f"dim={dim} must be divisible by n_heads={n_heads}")
        self.recompute_group = check_recompute_group(o.recompute_group)
        self.dim, self.n_heads, self.head_dim, self.init_seed = dim, n_heads, dim // n_heads, init_seed
        self.activation, self.optimizer, self.momentum = o.activation, o.optimizer, o.momentum
        self.chunk_size, self.max_lr, self.momentum_max = o.chunk_size, o.max_lr, o.momentum_max
        self.lr_init = o.max_lr / 2 if o.lr_init is None else o.lr_init
        self.exact_output, self.hidden_chunk = o.exact_output, o.hidden_chunk
        self.retain_to_init, self.conv_size, self.naive = o.retain_to_init, o.conv_size, o.naive
        self.memory_frozen = False
        self._build(o)
        if next(self.parameters()).device.type != "meta":
            self.reset_parameters()

    def _build(self, o: Any) -> None:
        raise NotImplementedError

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Any:
        """A fresh state: the next call starts from the meta-learned initial memory and a zero
        conv tail."""
        return self.state_class(None, None)

    def set_memory_frozen(self, frozen: bool) -> None:
        """``True``: read the memory as it is and write nothing (test-time learning off;
        ``nestlearn.models.set_memory_frozen``). What a frozen call returns as its state is the
        subclass's docstring's."""
        self.memory_frozen = bool(frozen)

    def reset_parameters(self) -> None:
        raise NotImplementedError
