"""An LSTM token mixer (``torch.nn.LSTM``) with the house ``forward(x, *, state)`` signature.

The first row of the Nested Learning paper's Table 5 (formal-language recognition) is an LSTM: a
non-parallel recurrent network that recognises every language of the table. It is the sanity row
of the formal-language harness here: if the LSTM does not reach 100 / 100 on Parity, the harness
or the recipe is wrong, not the models under test.

Axis legend: B batch, T tokens, D width.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from nestlearn.utils.init import uniform_
from nestlearn.utils.state import detach_fields

__all__ = ["LSTMMixer", "LSTMState"]


class LSTMState(NamedTuple):
    """Per-sequence state: hidden and cell vectors, each ``[B, D]`` (``None`` = zeros)."""

    h: Tensor | None = None
    c: Tensor | None = None

    def detach(self) -> LSTMState:
        """Cut the autograd history (truncated backprop through time)."""
        return LSTMState(*detach_fields(self))


class LSTMMixer(nn.Module):
    """One LSTM layer as a token mixer: ``x [B, T, D] -> y [B, T, D]``.

    Args:
        dim: model width ``D`` (input and hidden size of the LSTM).
        init_seed: seed of this layer's own init, so the result does not depend on the global RNG.
    """

    supports_naive = False
    """No reference op to switch to (``nestlearn.layers.protocol.Mixer``)."""

    def __init__(self, dim: int, *, init_seed: int = 0) -> None:
        super().__init__()
        self.dim, self.init_seed = dim, init_seed
        self.lstm = nn.LSTM(dim, dim, batch_first=True)
        if self.lstm.weight_ih_l0.device.type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """torch's LSTM init (uniform(-1/sqrt(D), 1/sqrt(D))) from the layer's own generator, and a
        forget-gate bias of 1 (Jozefowicz et al. 2015), which helps long dependencies."""
        gen = torch.Generator().manual_seed(0x157 + self.init_seed)
        b = 1.0 / math.sqrt(self.dim)
        for p in self.lstm.parameters():
            uniform_(p, b, gen)
        D = self.dim
        self.lstm.bias_ih_l0[D : 2 * D].fill_(1.0)  # gate order: input, forget, cell, output
        self.lstm.bias_hh_l0[D : 2 * D].zero_()

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> LSTMState:
        """A fresh state (zeros)."""
        return LSTMState(None, None)

    def forward(self, x: Tensor, *, state: LSTMState | None = None) -> tuple[Tensor, LSTMState | None]:
        """``x: [B, T, D] -> y: [B, T, D]``; with ``state`` continue that sequence."""
        hc = None
        if state is not None and state.h is not None and state.c is not None:
            hc = (state.h.unsqueeze(0).to(x.dtype), state.c.unsqueeze(0).to(x.dtype))
        y, (h, c) = self.lstm(x, hc)
        return y, (LSTMState(h.squeeze(0), c.squeeze(0)) if state is not None else None)

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per token: the four gates' input and recurrent matmuls."""
        return 2 * 4 * 2 * self.dim * self.dim
