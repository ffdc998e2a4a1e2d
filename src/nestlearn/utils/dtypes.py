"""The compute-dtype rule (STYLE example 9), for every package: ``ops.common`` re-exports it.

Inner math (scans, memory gradients, CMS updates, optimizer inner states) runs in float32, or in
float64 when the inputs are float64 so that equivalence tests compare to rounding; results are
cast back to the input dtype.
"""

from __future__ import annotations

import torch

__all__ = ["compute_dtype"]


def compute_dtype(x: torch.Tensor | torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, float32 for everything else (float32, bfloat16, float16).

    ``x`` is a tensor or a dtype.
    """
    dtype = x if isinstance(x, torch.dtype) else x.dtype
    return torch.float64 if dtype == torch.float64 else torch.float32
