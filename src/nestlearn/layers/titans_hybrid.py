"""Titans hybrids (arXiv 2501.00663, §4.1-4.3): neural long-term memory combined with attention.

Axis legend: B batch, T tokens, D model width, H heads, F = D / H head dim, C segment length.

Three token mixers with the house signature ``forward(x, *, state=None) -> (y, state)``, built from
:class:`nestlearn.memory.NeuralMemory` (the Titans LMM) and
:class:`nestlearn.layers.persistent_attention.PersistentAttention` (softmax attention with ``N``
learned persistent tokens ``P``):

* :class:`MACMixer`, memory as a context (§4.1, eqs. 21-25). Per segment ``s`` of ``C`` tokens::

      h   = rmsnorm(M*_{s-1}(q)),  q = l2norm(silu(W_r x_s))     read-only retrieval     (21)
      y   = Attn([P || h || x_s])  causal inside the segment                            (22-23)
      m   = LMM(y)        the memory writes y and reads with y, per token (M_s = M_{s-1}(y)) (24)
      o   = W_o(rmsnorm(y) * sigmoid(rmsnorm(m)))                                      (25)

* :class:`MAGMixer`, memory as a gate (§4.2, eqs. 26-28)::

      y = SWA([P || x]),  m = LMM(x),  o = W_o(rmsnorm(y) * sigmoid(rmsnorm(m)))

* :class:`MALMixer`, memory as a layer (§4.3, eqs. 29-31)::

      m = LMM(x),  o = m + W_o SWA([P || rmsnorm(x + m)])

``y`` is the attention's head output before its ``W_o``; ``W_o`` is applied once, after the gate
("normalization and gating with a linear layer before the final output projection", §4.4), so no
projection is stacked on another. ``rmsnorm`` has a learned weight ("normalize the outputs ... using
learnable vector-valued weights, followed by a non-linearity", §4.2).

Choices the paper leaves open are listed in :mod:`nestlearn.models.families.titans_variants` and in
``docs/baselines.md``. Every mixer equals itself run on any split of the sequence with the state
threaded through (so prefill + token-by-token decode equals one call), and is causal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nestlearn.layers.attention import KVCache
from nestlearn.layers.persistent_attention import PersistentAttention
from nestlearn.memory.neural_memory import NeuralMemory, NeuralMemoryState
from nestlearn.ops.titans import memory_forward

__all__ = ["MACMixer", "MACState", "MAGMixer", "MALMixer", "HybridState"]


def _rms(x: Tensor, weight: Tensor) -> Tensor:
    """RMS norm in at least float32 (float64 stays float64), cast back to ``x.dtype``."""
    wdt = torch.promote_types(x.dtype, torch.float32)
    y = F.rms_norm(x.to(wdt), (x.shape[-1],), weight.to(wdt), eps=1e-6)
    return y.to(x.dtype)


def _detach(obj: Any) -> Any:
    return None if obj is None else obj.detach()


class HybridState(NamedTuple):
    """Per-sequence state of :class:`MAGMixer` and :class:`MALMixer`.

    Attributes:
        attention: the sliding-window KV cache (at most ``window - 1`` past tokens kept between
            calls), or ``None`` before the first call.
        memory: the long-term memory's state.
    """

    attention: KVCache | None
    memory: NeuralMemoryState

    def detach(self) -> HybridState:
        return HybridState(_detach(self.attention), self.memory.detach())


@dataclass
class MACState:
    """Per-sequence state of :class:`MACMixer`.

    Attributes:
        memory: the long-term memory's state (weights after the last token seen).
        retrieval: memory weights at the start of the current segment (``M_{s-1}`` of eq. 21),
            per layer ``[B, H, o, i]``; ``None`` means the learned ``M_0``.
        cache: keys/values of the current segment's retrievals and tokens, or ``None`` at a
            segment boundary.
        offset: tokens of the current segment already consumed, ``0 <= offset < segment_size``.
    """

    memory: NeuralMemoryState
    retrieval: tuple[Tensor, ...] | None = None
    cache: tuple[KVCache, KVCache] | None = None
    offset: int = 0

    def detach(self) -> MACState:
        return MACState(
            self.memory.detach(),
            None if self.retrieval is None else tuple(w.detach() for w in self.retrieval),
            None if self.cache is None else (self.cache[0].detach(), self.cache[1].detach()),
            self.offset,
        )


class _GatedOutput(nn.Module):
    """``o = W_o(rmsnorm(y) * sigmoid(rmsnorm(m)))`` with learned norm weights (init ones)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.y_weight = nn.Parameter(torch.empty(dim))
        self.m_weight = nn.Parameter(torch.empty(dim))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.y_weight.fill_(1.0)
        self.m_weight.fill_(1.0)

    def forward(self, y: Tensor, m: Tensor, wo: nn.Linear) -> Tensor:
        return wo(_rms(y, self.y_weight) * torch.sigmoid(_rms(m, self.m_weight)))


class _AttentionMemoryPair(nn.Module):
    """What MAG and MAL share: an attention branch ``attn`` and a neural memory ``memory`` of one
    width, whose per-sequence states pair up as a :class:`HybridState`. Each subclass registers
    the two modules itself (their order is its ``state_dict``'s)."""

    supports_naive = True
    """The memory's ``naive`` option runs its reference op (``nestlearn bench --naive``)."""

    attn: PersistentAttention
    memory: NeuralMemory

    def __init__(self, attention: PersistentAttention, memory: NeuralMemory) -> None:
        super().__init__()
        if attention.dim != memory.dim:
            raise ValueError(f"attention dim {attention.dim} != memory dim {memory.dim}")
        self.dim = attention.dim

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> HybridState:
        return HybridState(
            self.attn.init_state(batch_size, device, dtype),
            self.memory.init_state(batch_size, device, dtype),
        )

    def flops_per_token(self, seq_len: int) -> int:
        return self.attn.flops_per_token(seq_len) + self.memory.flops_per_token(seq_len)


class MAGMixer(_AttentionMemoryPair):
    """Titans MAG: sliding-window attention and the neural memory in parallel, gated (§4.2).

    Args:
        attention: a :class:`PersistentAttention` with ``window`` set (its ``W_o`` is the output
            projection after the gate).
        memory: the :class:`NeuralMemory` branch; it reads the block input ``x`` (not ``P``).
    """

    def __init__(self, attention: PersistentAttention, memory: NeuralMemory) -> None:
        super().__init__(attention, memory)
        self.attn, self.memory, self.gate = attention, memory, _GatedOutput(attention.dim)

    def forward(
        self, x: Tensor, *, state: HybridState | None = None
    ) -> tuple[Tensor, HybridState | None]:
        """``x: [B, T, D] -> [B, T, D]``."""
        y, attn_state = self.attn.heads(x, state=state.attention if state is not None else None)
        m, mem_state = self.memory(x, state=state.memory if state is not None else None)
        out = self.gate(y, m, self.attn.wo)
        if state is None:
            return out, None
        return out, HybridState(attn_state, mem_state)  # type: ignore[arg-type]


class MALMixer(_AttentionMemoryPair):
    """Titans MAL: the neural memory layer, then sliding-window attention over its output (§4.3).

    ``o = m + W_o SWA([P || rmsnorm(x + m)])`` with ``m = LMM(x)``: two residual sub-layers
    (memory, then attention) inside the block's one mixer slot.
    """

    def __init__(self, attention: PersistentAttention, memory: NeuralMemory) -> None:
        super().__init__(attention, memory)
        self.memory, self.attn = memory, attention
        self.norm_weight = nn.Parameter(torch.empty(attention.dim))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.norm_weight.fill_(1.0)

    def forward(
        self, x: Tensor, *, state: HybridState | None = None
    ) -> tuple[Tensor, HybridState | None]:
        """``x: [B, T, D] -> [B, T, D]``."""
        m, mem_state = self.memory(x, state=state.memory if state is not None else None)
        z = _rms(x + m, self.norm_weight)
        y, attn_state = self.attn(z, state=state.attention if state is not None else None)
        if state is None:
            return m + y, None
        return m + y, HybridState(attn_state, mem_state)  # type: ignore[arg-type]


class MACMixer(nn.Module):
    """Titans MAC: segment attention over persistent tokens, memory retrievals and the segment.

    Args:
        attention: a :class:`PersistentAttention` without a window (full attention inside a
            segment); its ``W_o`` is the output projection after the gate.
        memory: the :class:`NeuralMemory`; it is written with (and read by) the attention output.
        segment_size: ``C``, tokens per segment.

    The sequence is cut into segments at multiples of ``C`` from the start of the sequence (the
    state remembers where the current segment started, so any split of a sequence into calls
    gives the same result). Segments are processed in order: the retrieval of segment ``s`` reads
    the memory as it was after segment ``s - 1``, and the memory learns from segment ``s``'s
    attention output token by token (chunk-parallel inside the segment, as the Titans op defines).
    """

    supports_naive = True
    """The memory's ``naive`` option runs its reference op (``nestlearn bench --naive``)."""

    def __init__(self, attention: PersistentAttention, memory: NeuralMemory, segment_size: int):
        super().__init__()
        if attention.dim != memory.dim:
            raise ValueError(f"attention dim {attention.dim} != memory dim {memory.dim}")
        if attention.window is not None:
            raise ValueError(
                "MAC attends fully inside a segment: build its attention with window=None"
            )
        if segment_size < 1:
            raise ValueError(f"segment_size must be >= 1, got {segment_size}; try 64")
        D = attention.dim
        self.dim, self.segment_size = D, segment_size
        self.attn, self.memory = attention, memory
        self.wr = nn.Linear(D, D, bias=False)  # W_Q of eq. 21: queries of the retrieval
        self.h_weight = nn.Parameter(torch.empty(D))
        self.gate = _GatedOutput(D)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.h_weight.fill_(1.0)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> MACState:
        return MACState(self.memory.init_state(batch_size, device, dtype))

    def _retrieve(self, x: Tensor, weights: tuple[Tensor, ...]) -> Tensor:
        """``h = rmsnorm(M*(l2norm(silu(W_r x))))`` per memory head, no memory update (eq. 21)."""
        B, n, D = x.shape
        H, F_ = self.memory.n_heads, self.memory.head_dim
        q = F.normalize(F.silu(self.wr(x)).view(B, n, H, F_), dim=-1)
        r = memory_forward(weights, q.transpose(1, 2).to(weights[0].dtype), self.memory.activation)
        return _rms(r.transpose(1, 2).reshape(B, n, D).to(x.dtype), self.h_weight)

    def forward(
        self, x: Tensor, *, state: MACState | None = None
    ) -> tuple[Tensor, MACState | None]:
        """``x: [B, T, D] -> [B, T, D]``; with ``state``, continue that sequence."""
        B, T, _ = x.shape
        st = state if state is not None else self.init_state(B, x.device, x.dtype)
        mem, retrieval, cache, off = st.memory, st.retrieval, st.cache, st.offset
        outs = []
        pos = 0
        while pos < T:
            n = min(self.segment_size - off, T - pos)
            xs = x[:, pos : pos + n]
            weights = retrieval if retrieval is not None else self.memory._initial_inner(B).weights
            h = self._retrieve(xs, weights)
            y, cache = self.attn.segment_heads(xs, h, cache)
            m, mem = self.memory(y, state=mem)
            outs.append(self.gate(y, m, self.attn.wo))
            pos, off = pos + n, off + n
            if off == self.segment_size:  # segment done: the next one reads the updated memory
                assert mem is not None and mem.inner is not None
                retrieval, cache, off = mem.inner.weights, None, 0
        out = torch.cat(outs, dim=1) if len(outs) != 1 else outs[0]
        if state is None:
            return out, None
        return out, MACState(mem, retrieval, cache, off)  # type: ignore[arg-type]

    def flops_per_token(self, seq_len: int) -> int:
        """Projections, memory (write + read on ``y``, one extra read for the retrieval) and the
        segment attention (keys: persistent + 2 x the causal half of a segment)."""
        D, C = self.dim, min(self.segment_size, seq_len)
        attn = self.attn
        proj = 2 * D * attn.head_dim * (2 * attn.n_heads + 2 * attn.n_kv_heads)
        proj += 2 * D * attn.head_dim * 2 * attn.n_kv_heads  # k, v of the retrievals
        ctx = attn.n_persistent + C  # h and x halves, each causal (C / 2 on average)
        scores = 2 * 2 * attn.n_heads * attn.head_dim * ctx
        retrieve = 2 * D * D + sum(2 * w.numel() for w in self.memory.mem_init)
        return proj + scores + retrieve + self.memory.flops_per_token(seq_len)
