"""Seeded init helpers shared by the layers: draws from a layer's own generator, in float64.

Every layer draws its own parameters from ``torch.Generator().manual_seed(salt + init_seed)``
(never the global RNG), in float64 and then copied into the parameter's dtype, so a model built
on any device and in any dtype starts from the same numbers. These are those draws, written once.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["uniform_"]


@torch.no_grad()
def uniform_(p: Tensor, bound: float, gen: torch.Generator) -> Tensor:
    """Fill ``p`` with ``uniform(-bound, bound)`` drawn from ``gen`` (torch's Conv1d / LSTM
    default with ``bound = 1 / sqrt(fan_in)``); returns ``p``."""
    u = torch.rand(p.shape, generator=gen, dtype=torch.float64)
    return p.copy_((2.0 * u - 1.0) * bound)

