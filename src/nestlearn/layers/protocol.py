"""The contract every token mixer (and every FFN) of a :class:`~nestlearn.models.skeleton.Block`
keeps, written down once.

A mixer is an ``nn.Module`` with:

* ``forward(x, *, state=None) -> (y, state)``: ``x, y: [B, T, D]``. With ``state=None`` a fresh
  sequence is processed and ``None`` is returned as the state; with a state from
  :meth:`init_state` the sequence continues (one call equals chunk-aligned segments, and
  prefill + token-by-token decode) and the new state is returned.
* ``init_state(batch_size, device, dtype)``: a fresh per-sequence state (a NamedTuple or
  dataclass with ``detach()``), or ``None`` for a stateless layer.
* ``flops_per_token(seq_len) -> int``: forward FLOPs per token (matmuls; the skeleton's x3 gives
  the training cost), at training length ``seq_len`` (attention's cost grows with it; most
  layers ignore it).
* ``supports_naive``: a class attribute, ``True`` when the layer can run its per-token (or
  per-chunk) reference op, switched by its ``naive`` option (``nestlearn bench --naive``).

Residual-output Linears (those whose output is added to the residual stream) are tagged where
they are built, ``self.wo = mark_residual_out(nn.Linear(...))``, and initialised with the
residual scaling by ``LanguageModel.init_weights``; their names do not matter.

The protocol is structural: a layer does not inherit from it (the memories under
``nestlearn.memory`` cannot import this floor), and ``isinstance(m, Mixer)`` checks the four
members are there. Layers that learn in context also keep the freeze protocol of
:mod:`nestlearn.memory.freeze` (``set_memory_frozen``, ``memory_frozen``).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from nestlearn.utils.residual import is_residual_out, mark_residual_out

__all__ = ["Mixer", "is_residual_out", "mark_residual_out"]


@runtime_checkable
class Mixer(Protocol):
    """A token mixer or FFN of a block (see the module docstring for the contract)."""

    supports_naive: bool
    """Whether the layer's ``naive`` option runs a reference op (class attribute)."""

    def forward(self, x: Tensor, *, state: Any = None) -> tuple[Tensor, Any]:
        """``x: [B, T, D] -> (y [B, T, D], state)``; ``state=None`` returns ``None``."""
        ...

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Any:
        """A fresh per-sequence state, or ``None`` for a stateless layer."""
        ...

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per token at training length ``seq_len``."""
        ...
