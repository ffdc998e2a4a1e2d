"""Feed-forward layers. Signature shared by every FFN: ``forward(x, *, state=None) -> (y, state)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nestlearn.utils.residual import mark_residual_out


class SwiGLU(nn.Module):
    """Gated MLP ``W_down(silu(W_gate x) * W_up x)`` (Shazeer 2020), as in Llama.

    Shapes: ``x: [B, T, D] -> [B, T, D]``. Stateless: ``state`` passes through unchanged.
    """

    supports_naive = False
    """No reference op to switch to (``nestlearn.layers.protocol.Mixer``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.dim, self.hidden = dim, hidden
        self.w_gate = nn.Linear(dim, hidden, bias=False)
        self.w_up = nn.Linear(dim, hidden, bias=False)
        self.w_down = mark_residual_out(nn.Linear(hidden, dim, bias=False))

    def forward(self, x: torch.Tensor, *, state: None = None) -> tuple[torch.Tensor, None]:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x)), state

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> None:
        """Stateless: no per-sequence state."""
        return None

    def flops_per_token(self, seq_len: int) -> int:
        """Forward multiply-adds x2 per token (matmuls only; independent of ``seq_len``)."""
        return 2 * 3 * self.dim * self.hidden
